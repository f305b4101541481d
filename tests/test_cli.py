"""The console script end to end: help on every subcommand, synth then baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.cli import COMMANDS


def fedinterest(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [m.NAME for m in COMMANDS])
def test_help_on_each_subcommand(command):
    result = fedinterest(command, "--help")
    assert result.returncode == 0
    assert f"usage: fedinterest {command}" in result.stdout


def test_synth_then_baselines_prints_the_table(tmp_path):
    out = tmp_path / "shops"
    result = fedinterest("synth", "--out", str(out), "--shops", "3", "--users", "300", "--days", "20", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "Bayes-optimal" in result.stdout
    result = fedinterest("baselines", "--data", str(out), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    for name in ("persistence", "popularity", "markov", "recency-frequency", "mig HR@5", "Bayes-optimal"):
        assert name in result.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["baselines"]) == {"persistence", "popularity", "markov", "recency-frequency"}
    assert 0 < saved["bayes_optimal_acc@1"] < 1
