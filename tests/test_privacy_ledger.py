"""Privacy planning over all rounds and the persistent ledger that refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from client.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from client.privacy import PrivacyConfig, epsilon_spent, plan_privacy
from common.config import ConfigError


def make_plan(rounds=4, epsilon=8.0, accountant="rdp"):
    return plan_privacy(epsilon=epsilon, delta=1e-5, sample_rate=0.02, steps_per_round=50, rounds=rounds,
                        max_grad_norm=1.0, accountant=accountant)


@pytest.mark.parametrize("accountant, epsilon", [("rdp", 8.0), ("rdp", 1.0), ("prv", 8.0)])
def test_epsilon_after_all_rounds_matches_the_plan(tmp_path, accountant, epsilon):
    ledger = PrivacyLedger.open(tmp_path)
    ledger.set_plan(make_plan(rounds=4, epsilon=epsilon, accountant=accountant))
    spent = []
    for r in range(4):
        spent.append(ledger.commit(50, budget=epsilon, server_round=r + 1).epsilon)
    assert spent == sorted(spent) and spent[0] > 0
    assert abs(spent[-1] - epsilon) / epsilon < 0.01
    # the same history, accounted from scratch
    assert spent[-1] == pytest.approx(epsilon_spent([(ledger.plan.noise_multiplier, 0.02, 200)], 1e-5, accountant))


def test_the_round_that_would_overflow_is_refused(tmp_path):
    ledger = PrivacyLedger.open(tmp_path)
    ledger.set_plan(make_plan(rounds=2))
    for _ in range(2):
        decision = ledger.check(8.0, 50)
        assert decision.allowed
        ledger.commit(50, budget=8.0)
    decision = ledger.check(8.0, 50)
    assert not decision.allowed
    assert decision.epsilon_after > 8.0
    assert "budget" in decision.reason and "8" in decision.reason


def test_the_server_can_lower_the_budget_never_raise_it(tmp_path):
    config = PrivacyConfig(epsilon=8.0)
    assert config.budget(server_epsilon=4.0) == 4.0
    assert config.budget(server_epsilon=100.0) == 8.0
    assert config.budget(server_epsilon=None) == 8.0
    ledger = PrivacyLedger.open(tmp_path)
    ledger.set_plan(make_plan(rounds=4))
    ledger.commit(50, budget=8.0)
    ledger.commit(50, budget=8.0)
    assert ledger.check(config.budget(100.0), 50).allowed
    assert not ledger.check(config.budget(3.0), 50).allowed


def test_default_delta_and_validation():
    assert PrivacyConfig().delta_for(n_users=500) == pytest.approx(1 / 5000)
    assert PrivacyConfig(delta=1e-6).delta_for(500) == 1e-6
    with pytest.raises(ConfigError, match="epsilon"):
        PrivacyConfig(epsilon=-1)
    with pytest.raises(ConfigError, match="no noise level"):
        plan_privacy(epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps_per_round=1000, rounds=10, max_grad_norm=1.0)


def test_ledger_survives_reopening(tmp_path):
    ledger = PrivacyLedger.open(tmp_path)
    ledger.set_plan(make_plan())
    ledger.commit(50, budget=8.0, server_round=3)
    again = PrivacyLedger.open(tmp_path)
    assert again.plan == ledger.plan
    assert again.rounds == ledger.rounds
    assert again.spent == pytest.approx(ledger.spent)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # torn write
        lambda text: "not json at all",
        lambda text: text.replace('"steps": 50', '"steps": 5'),  # edited by hand: checksum breaks
        lambda text: "",
    ],
)
def test_a_damaged_ledger_is_an_error_never_a_reset(tmp_path, damage):
    ledger = PrivacyLedger.open(tmp_path)
    ledger.set_plan(make_plan())
    ledger.commit(50, budget=8.0)
    path = tmp_path / LEDGER_FILE
    path.write_text(damage(path.read_text()))
    with pytest.raises(LedgerError, match="damaged.*never reset automatically"):
        PrivacyLedger.open(tmp_path)


def read_rounds(state):
    path = state / LEDGER_FILE
    if not path.exists():
        return []
    return json.loads(path.read_text())["rounds"]


def train_local(synthetic_dir, state, rounds):
    return [
        sys.executable, "-m", "common", "train-local", "--data", str(synthetic_dir), "--shop", "shop_02",
        "--backbone", "tiny", "--epsilon", "8", "--rounds", str(rounds), "--max-train", "64", "--max-test", "16",
        "--batch-size", "16", "--max-length", "32", "--state", str(state),
    ]


def test_a_killed_client_does_not_reset_its_epsilon(tmp_path, synthetic_dir):
    state = tmp_path / "shop"
    process = subprocess.Popen(train_local(synthetic_dir, state, rounds=40),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while len(read_rounds(state)) < 2:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no round recorded in time"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)  # really killed, mid-run
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    before = read_rounds(state)
    PrivacyLedger.open(state)  # still a valid ledger after the kill

    result = subprocess.run(train_local(synthetic_dir, state, rounds=2), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after = read_rounds(state)
    assert after[: len(before)] == before
    assert [r["round"] for r in after] == list(range(1, len(before) + 3))
    assert after[len(before)]["epsilon"] > before[-1]["epsilon"]
