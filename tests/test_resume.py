"""Killing the federation after round 2 and resuming finishes it with the same final adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.long(minutes=2.5)  # of real processes, on 2 cores: scheduled first (conftest)

ARGS = ["--backbone", "tiny", "--shops", "5", "--rounds", "3", "--max-train-per-user", "1", "--max-steps", "4",
        "--batch-size", "16", "--max-length", "40", "--eval-per-user", "1", "--central-test", "80",
        "--reference-rounds", "0", "--seed", "7"]


def simulate(out, *extra, **popen):
    command = [sys.executable, "-m", "fedinterest", "simulate", *ARGS, "--out", str(out), *extra]
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


def test_kill_after_round_two_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    uninterrupted = simulate(tmp_path / "a", env=env)
    finish(uninterrupted)

    interrupted = simulate(tmp_path / "b", env=env)
    deadline = time.time() + 900
    while checkpoint_round(tmp_path / "b") < 2:
        assert interrupted.poll() is None, interrupted.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(interrupted.pid, signal.SIGKILL)  # the server, its Ray workers, everything
    interrupted.wait(timeout=60)
    assert checkpoint_round(tmp_path / "b") in (2, 3)

    output = finish(simulate(tmp_path / "b", "--resume", env=env))
    assert "resuming after round" in output
    expected, got = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
