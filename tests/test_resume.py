"""Killing the federation after round 2 and resuming finishes it with the same final adapter.

The uninterrupted run is also ``fedinterest simulate`` checked whole: ``flwr run`` on a local
simulation SuperLink streams the rounds (no Flower INFO lines, no deprecation notice), writes the
report and the export, leaves no process behind, and its shops (under Ray, below the SuperLink)
get the run's environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedinterest.common.model.prefix import CACHE_ENV
from tests.test_simulate_flwr_run import processes_with

pytestmark = pytest.mark.long(minutes=3)  # of real processes, on 2 cores: scheduled first (conftest)

ARGS = ["--backbone", "tiny", "--rounds", "3", "--max-train-per-user", "1", "--max-steps", "4",
        "--batch-size", "16", "--max-length", "40", "--eval-per-user", "1", "--central-test", "80",
        "--reference-rounds", "0", "--seed", "7", "--lora-layers", "top1"]
DEPRECATED = "run_simulation` function is deprecated"


def simulate(out, data, *extra, **popen):
    command = [sys.executable, "-m", "fedinterest", "simulate", *ARGS, "--data", str(data), "--shops", "3",
               "--out", str(out), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def finish(process, timeout=900):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def checkpoint_round(out) -> int:
    path = out / "federation" / "checkpoint" / "checkpoint.json"
    try:
        return json.loads(path.read_text())["round"]
    except (OSError, ValueError):
        return 0


def adapter(out) -> dict[str, np.ndarray]:
    return load_file(str(out / "federation" / "export" / "adapter" / "adapter_model.safetensors"))


def check_whole_run(out: Path, output: str, marker: str, encodings: Path) -> None:
    assert "[round 3]" in output and "exported the global adapter" in output
    assert DEPRECATED not in output
    assert "INFO :" not in output  # Flower's own log lines stay in the run's log
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"] == 3 and [h["round"] for h in report["history"]] == [1, 2, 3]
    assert (Path(report["export"]) / "adapter" / "adapter_model.safetensors").is_file()
    nodes = json.loads((out / "federation" / "sim_nodes.json").read_text())
    assert sorted(nodes) == ["0", "1", "2"] and all(Path(n["state-dir"]).is_absolute() for n in nodes.values())
    assert (out / "federation" / "logs" / "flwr-run.log").is_file()
    assert not (out / "federation" / "flower").exists()  # the run's app and FLWR_HOME are gone
    assert processes_with(marker) == []
    # the shops' processes got the run's environment: their frozen-prefix encodings (training and test
    # set of 3 shops) are in the shared cache beside the driver's test set
    assert len(list(encodings.glob("*.pt"))) >= 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_after_round_two_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "shops"
    made = subprocess.run([sys.executable, "-m", "fedinterest", "synth", "--out", str(data), "--shops", "3",
                           "--users", "300", "--days", "20", "--seed", "5"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    marker = f"fedinterest-test-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(FLWR_HOME=str(tmp_path / "flwr"), FEDINTEREST_TEST_MARKER=marker)
    env[CACHE_ENV] = str(tmp_path / "encodings")  # what simulate sets for its shops on GPUs

    output = finish(simulate(tmp_path / "a", data, env=env))
    check_whole_run(tmp_path / "a", output, marker, tmp_path / "encodings")

    interrupted = simulate(tmp_path / "b", data, env=env)
    deadline = time.time() + 900
    while checkpoint_round(tmp_path / "b") < 2:
        assert interrupted.poll() is None, interrupted.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(interrupted.pid, signal.SIGKILL)  # the server, its Ray workers, everything
    interrupted.wait(timeout=60)
    assert checkpoint_round(tmp_path / "b") in (2, 3)

    output = finish(simulate(tmp_path / "b", data, "--resume", env=env))
    assert "resuming after round" in output
    expected, got = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
