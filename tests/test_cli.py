"""The console script end to end: help on every subcommand, synth then baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedinterest.cli import COMMANDS


def fedinterest(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fedinterest", *args], capture_output=True, text=True, timeout=timeout)


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


def test_train_local_labels_runs_and_ledger_show(tmp_path, synthetic_dir):
    common = ["train-local", "--data", str(synthetic_dir), "--shop", "shop_02", "--backbone", "tiny",
              "--max-train-per-user", "1", "--max-test", "32", "--max-length", "32", "--batch-size", "16"]
    plain = fedinterest(*common, "--non-private", "--state", str(tmp_path / "np"))
    assert plain.returncode == 0, plain.stderr
    assert "fedinterest [NON-PRIVATE]" in plain.stdout and "markov" in plain.stdout
    assert not (tmp_path / "np").exists()  # a non-private run spends nothing and records nothing

    private = fedinterest(*common, "--epsilon", "4", "--rounds", "2", "--state", str(tmp_path / "dp"),
                          "--json", str(tmp_path / "dp.json"))
    assert private.returncode == 0, private.stderr
    assert "fedinterest [DP ε=4/user]" in private.stdout and "privacy plan: σ=" in private.stdout
    assert "per user" in private.stdout and "PRV" in private.stdout and "OS CSPRNG" in private.stdout
    rounds = json.loads((tmp_path / "dp.json").read_text())["rounds"]
    assert len(rounds) == 2 and 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"] <= 4.0 * 1.01

    shown = fedinterest("ledger", "show", "--state", str(tmp_path / "dp"))
    assert shown.returncode == 0, shown.stderr
    assert "spent ε=" in shown.stdout and "left ε=" in shown.stdout
    assert "per user" in shown.stdout and "δ=" in shown.stdout and "PRV" in shown.stdout

    missing = fedinterest("ledger", "show", "--state", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no privacy_ledger.jsonl" in missing.stderr


def test_keys_new_roster_and_fingerprint(tmp_path):
    from fedinterest.common.secagg import Roster

    publics = {}
    for shop in ("north", "south", "east"):
        result = fedinterest("keys", "new", "--state-dir", str(tmp_path / shop))
        assert result.returncode == 0, result.stderr
        publics[shop] = result.stdout.split("public key: ")[1].split()[0]
        assert (tmp_path / shop / "identity.key").stat().st_mode & 0o077 == 0  # private to its owner
    again = fedinterest("keys", "new", "--state-dir", str(tmp_path / "north"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    roster = tmp_path / "roster.json"
    result = fedinterest("keys", "roster", "--out", str(roster), *(f"{k}={v}" for k, v in publics.items()))
    assert result.returncode == 0, result.stderr
    fingerprint = fedinterest("keys", "fingerprint", str(roster)).stdout.strip()
    assert fingerprint == Roster.load(roster).fingerprint() and fingerprint in result.stdout
    bad = fedinterest("keys", "roster", "--out", str(tmp_path / "r2.json"), "north=00zz")
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr and not (tmp_path / "r2.json").exists()
