"""`fedinterest sweep`: the summary's statistics, and a two-point sweep on a real Ray cluster."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from fedinterest.simulations.sweep import Point, grid, summarise
from tests.test_simulate_flwr_run import kill_processes_with

pytestmark = pytest.mark.long(minutes=3)  # of real processes, on 2 cores: scheduled first (conftest)

TINY = ["--backbone", "tiny", "--max-train-per-user", "1", "--max-steps", "3", "--batch-size", "16",
        "--physical-batch-size", "16", "--max-length", "32", "--eval-per-user", "1", "--central-test", "80",
        "--lora-layers", "top1"]  # a frozen prefix: the points share its encodings


def row(eps, seed, value, baseline=0.5, n=400.0):
    point = Point(eps, "user", 5, 2, 0.5, seed)
    return {"key": point.key, "epsilon": eps if math.isfinite(eps) else "inf", "unit": "user", "shops": 5,
            "rounds": 2, "alpha": 0.5, "seed": seed, "mig_hr@5": value, "hr@5": value, "acc@1": value,
            "mig_acc@1": value, "n": n, "n_migrating": n, "best_baseline": "markov",
            **{f"baseline_{m}": baseline for m in ("mig_hr@5", "hr@5", "acc@1", "mig_acc@1")}}


def test_the_grid_and_the_recommendation():
    points = grid([1.0, math.inf], ["user", "example"], [5], [2], [0.5], seeds=2)
    assert len(points) == 8 and len({p.key for p in points}) == 8
    assert "--non-private" in points[-1].arguments() and "--epsilon" in points[0].arguments()
    rows = [row(1.0, 0, 0.48), row(1.0, 1, 0.50), row(2.0, 0, 0.60), row(2.0, 1, 0.62),
            row(4.0, 0, 0.695), row(4.0, 1, 0.705), row(math.inf, 0, 0.70), row(math.inf, 1, 0.71)]
    summary = summarise(rows, tolerance=0.01)
    (group,) = summary["groups"]
    assert [c["epsilon"] for c in group["curve"]] == [1.0, 2.0, 4.0, math.inf]
    assert group["curve"][0]["mig_hr@5"] == pytest.approx(0.49) and group["curve"][0]["mig_hr@5_se"] == pytest.approx(0.01)
    assert group["smallest_epsilon_within_tolerance"] == 4.0  # 0.70 against 0.705 non-private
    assert group["smallest_epsilon_beating_baseline"] == 2.0  # 0.61 ± 0.01 against 0.5; ε = 1 does not beat it
    one_seed = summarise([row(1.0, 0, 0.56), row(math.inf, 0, 0.7)])["groups"][0]
    assert one_seed["smallest_epsilon_beating_baseline"] == 1.0  # 0.56 vs 0.5 over 400 examples: z ≈ 1.7


def test_a_failing_point_is_named_with_its_log_and_no_traceback(tmp_path):
    command = [sys.executable, "-m", "fedinterest", "sweep", "--epsilon", "8", "--seeds", "1", "--rounds", "1",
               "--shops", "3", "--out", str(tmp_path / "sweep"), "--cpus-per-point", "1", "--",
               "--backbone", str(tmp_path / "no-such-backbone")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 sweep point(s) failed" in result.stderr and "eps8-user-shops3" in result.stderr
    assert "no-such-backbone" in result.stderr and "Traceback" not in result.stderr.split("failed", 1)[1][:300]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_point_sweep_on_a_ray_cluster(tmp_path):
    ray = str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["FLWR_HOME"] = str(tmp_path / "flwr")
    # a cluster of this test's own: its files under a temp dir of its own (where `ray.init` elsewhere on the
    # machine does not look for a cluster to join), and stopped by killing its processes alone (`ray stop`
    # would stop every Ray on the machine, other tests' too)
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    marker = f"fedinterest-test-{uuid.uuid4().hex}"
    env.update(RAY_TMPDIR=ray_tmp, FEDINTEREST_TEST_MARKER=marker)
    port = free_port()
    started = subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        out = tmp_path / "sweep"
        command = [sys.executable, "-m", "fedinterest", "sweep", "--epsilon", "8,inf", "--seeds", "1", "--rounds", "1",
                   "--shops", "3", "--out", str(out), "--ray-address", f"127.0.0.1:{port}",
                   "--cpus-per-point", "1", "--", *TINY]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
        rows = json.loads((out / "sweep.json").read_text())["rows"]
        assert [r["epsilon"] for r in rows] == [8.0, "inf"]
        assert all(0 <= r["mig_hr@5"] <= 1 and r["seconds"] > 0 for r in rows)
        assert 0 < rows[0]["epsilon_spent_max"] <= 8.0 * 1.01 and rows[1]["epsilon_spent_max"] is None
        assert rows[0]["epsilon_spent_per_shop"].count("=") == 3 and "mig_auroc" in rows[0]
        assert (out / "privacy_utility.png").stat().st_size > 0 and "smallest ε" in result.stdout
        assert any((out / "cache").iterdir())  # the frozen-prefix encodings, kept for every point
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert again.returncode == 0 and "2 of 2 points already finished" in again.stdout
    finally:
        kill_processes_with(marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
