"""The one-run canary audit: valid below the claim under DP, and with the power to see a leak."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedinterest.simulations.audit import AuditConfig, canary_table, run_audit
from fedinterest.simulations.audit_bound import audit_ceiling


@pytest.fixture(scope="module")
def audited(tiny_shop_table, tmp_path_factory):
    """Two runs on one shop: DP at ε=8 per example, and non-private (what a missing noise would give)."""
    out = tmp_path_factory.mktemp("audit")
    runs = {}
    for name, epsilon in (("dp", 8.0), ("none", None)):
        config = AuditConfig(epsilon=epsilon, unit="example", canaries=300, rounds=1, epochs=2.0, seed=4)
        runs[name] = run_audit(tiny_shop_table, config, state_dir=out / name, progress=lambda line: None)
    return runs


def test_the_lower_bound_stays_below_the_claim_under_dp(audited):
    result = audited["dp"]
    assert result.accountant == "prv" and 0 < result.accountant_epsilon <= 8.0
    assert result.consistent and result.lower_bound <= result.claimed_epsilon
    assert 100 < result.included < 200  # about half of the 300 canaries, by a fair coin
    assert 0 < result.delta < 1e-3
    assert result.ceiling == pytest.approx(audit_ceiling(300, result.delta))
    assert result.verdict == ("no power" if result.ceiling < 8.0 else "pass")  # 300 canaries cannot refute ε = 8


def test_the_fast_engine_runs_the_same_audit(tiny_shop_table, tmp_path):
    """DP-SGD with the fast engine (one backward for LoRA): audited the same way, below its claim."""
    config = AuditConfig(epsilon=2.0, unit="example", canaries=100, rounds=1, epochs=1.0, seed=5, engine="fast")
    result = run_audit(tiny_shop_table, config, state_dir=tmp_path / "fast", progress=lambda line: None)
    assert result.config.engine == "fast" and result.accountant == "prv" and 0 < result.accountant_epsilon <= 2.0
    assert result.consistent and result.verdict in ("pass", "no power") and not result.failed
    assert result.to_dict()["config"]["engine"] == "fast"


def test_the_audit_sees_a_run_without_noise(audited):
    """The same pipeline without DP leaks each canary's inclusion: a claim of ε=1 would be caught."""
    result = audited["none"]
    assert result.white_box["eps_lower_bound"] > 1.0 and result.black_box["eps_lower_bound"] > 1.0
    assert result.lower_bound > audited["dp"].lower_bound


def test_each_canary_is_one_example_or_one_user_with_its_own_labels(tiny_shop_table):
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.task import build_taxonomy, default_split, prepare_task

    split = default_split(tiny_shop_table, TaskConfig())
    base = build_taxonomy(tiny_shop_table, 50, before=split.val_start)
    for per_canary in (1, 3):
        canaries, labels = canary_table(base, split, 40, per_canary, np.random.default_rng(0))
        named = len(base.categories)
        assert labels.categories[:named] == base.categories and len(labels.categories) == named + 40 * per_canary
        train = prepare_task(canaries, TaskConfig(), taxonomy=labels, split=split, require_examples=False).train
        assert len(train) == 40 * per_canary  # exactly per_canary examples per canary, all in training
        assert len(set(train.label.tolist())) == len(train) and train.label.min() >= named  # a label of its own


def test_audit_command_prints_the_table_and_writes_the_report(tmp_path, synthetic_dir):
    result = subprocess.run(
        [sys.executable, "-m", "fedinterest", "audit", "--data", str(synthetic_dir), "--shop", "shop_02",
         "--epsilon", "1,8", "--unit", "user", "--canaries", "60", "--rounds", "1", "--engine", "opacus",
         "--release", "dp-sgd,evaluation,broken-evaluation", "--runs", "50000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lower bound" in result.stdout and "ceiling" in result.stdout
    assert "no power" in result.stdout  # 60 canaries can never refute ε = 8: said, not "consistent"
    assert "flagged, as it should be" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    row = report["results"][1]
    assert row["config"]["unit"] == "user" and row["claimed_epsilon"] == 8.0 and row["consistent"]
    assert row["verdict"] == "no power" and row["ceiling"] == pytest.approx(audit_ceiling(60, row["delta"]))
    assert report["results"][0]["verdict"] in ("pass", "no power")
    releases = report["releases"]
    assert [r["release"] for r in releases] == ["evaluation"] * 2 + ["broken-evaluation"] * 2
    assert all(r["verdict"] == "pass" and r["lower_bound"] <= r["claimed_epsilon"] < r["ceiling"] for r in releases[:2])
    assert all(r["verdict"] == "flagged, as it should be" for r in releases[2:])
    bad = subprocess.run([sys.executable, "-m", "fedinterest", "audit", "--unit", "household"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--unit" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "fedinterest", "audit", "--engine", "jax"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--engine" in bad.stderr
