"""The generator: determinism, and learnable migration structure on the default shops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.baselines import run_baselines
from common.config import TaskConfig
from simulations.synthetic import ORACLE_TASK, SynthConfig, bayes_accuracy_since, write_synthetic

SMALL = SynthConfig(shops=3, users=60, days=10, seed=11)


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SMALL)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_other_seed_other_data(tmp_path):
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SynthConfig(**{**SMALL.__dict__, "seed": 12}))
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a["shop_00.csv"] != b["shop_00.csv"]
    assert a["categories.csv"] == b["categories.csv"]  # the catalogue is fixed


def test_layout_is_taobao_and_manifest_complete(tmp_path):
    write_synthetic(tmp_path, SMALL)
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["format"] == "taobao" and len(manifest["shops"]) == 3
    first = (tmp_path / "shop_00.csv").read_text().splitlines()[0].split(",")
    assert len(first) == 5 and first[3] in {"pv", "fav", "cart", "buy"} and first[4].isdigit()


def test_shops_are_non_iid(synthetic_dir):
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    weights = np.array([list(s["chain_weights"].values()) for s in truth["shops"].values()])
    # each shop puts most of its weight on three of the ten chains, and shops differ
    top3 = np.sort(weights, axis=1)[:, -3:].sum(axis=1)
    assert (top3 > 0.5).all()
    assert np.abs(weights[0] - weights[1]).sum() > 0.3


def test_oracle_assumes_the_default_task():
    d = TaskConfig()
    assert ORACLE_TASK == {k: getattr(d, k) for k in ORACLE_TASK}


def test_oracle_counts_the_same_points_as_the_task(synthetic_dir, synthetic_task):
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    split, window = synthetic_task.split, synthetic_task.config.window_seconds
    test_days = [d for d in truth["bayes_optimal"]["by_day"]
                 if d["t"] >= split.test_start and d["t"] + window <= split.end]
    assert sum(d["points"] for d in test_days) == len(synthetic_task.test)


def test_default_data_has_learnable_migration_structure(synthetic_dir, synthetic_task):
    task = synthetic_task
    results = run_baselines(task.train, task.test)
    # Markov knows where interests go next: it beats persistence on migrating users
    assert results["markov"]["mig_hr@5"] > results["persistence"]["mig_hr@5"] + 0.1
    # ... and the process is more predictable than any baseline can see
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    bayes = bayes_accuracy_since(truth, task.split.test_start, task.split.end - task.config.window_seconds)
    for name, metrics in results.items():
        assert bayes > metrics["acc@1"] + 0.05, name
    assert 0.2 < task.test.migrating.mean() < 0.8


def test_bad_config_is_refused():
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="users must be at least 2 per shop"):
        SynthConfig(shops=10, users=5)
