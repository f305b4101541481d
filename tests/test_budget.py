"""`fedinterest budget plan` against the ledger: what it promises is what a shop records."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fedinterest.client.budget import Shop, epsilon_for_sigma, plan_budget
from fedinterest.client.ledger import PrivacyLedger


def fedinterest(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fedinterest", *args], capture_output=True, text=True, timeout=timeout)


def test_the_plan_matches_what_train_local_records(tmp_path, synthetic_dir):
    state = tmp_path / "shop"
    trained = fedinterest("train-local", "--data", str(synthetic_dir), "--shop", "shop_02", "--backbone", "tiny",
                          "--max-train-per-user", "1", "--max-test", "32", "--max-length", "32", "--batch-size", "16",
                          "--epsilon", "4", "--rounds", "3", "--state", str(state))
    assert trained.returncode == 0, trained.stderr
    ledger = PrivacyLedger.open(state).read()
    units = round(ledger.plan.expected_batch_size / ledger.plan.sample_rate)  # the shop's training units
    planned = fedinterest("budget", "plan", "--users", str(units), "--delta", repr(ledger.terms.delta),
                          "--rounds", "3", "--batch-size", "16", "--evaluations", "0", "--epsilon", "4,8")
    assert planned.returncode == 0, planned.stderr
    row = next(line for line in planned.stdout.splitlines() if re.match(r"\s+4\s", line))
    sigma = float(row.split()[1])
    after = [float(v) for v in row.split("  ")[-2].replace(",", " ").split()]
    assert sigma == pytest.approx(ledger.plan.noise_multiplier, abs=5e-4)  # printed to 3 decimals
    recorded = [r.epsilon for r in ledger.rounds]
    assert len(recorded) == len(after) == 3
    for promised, spent in zip(after, recorded):
        assert promised == pytest.approx(spent, rel=0.01), (after, recorded)


def test_more_budget_buys_less_noise_and_sigma_runs_both_ways():
    shop = Shop(units=800, rounds=4, batch_size=32)
    plans = [plan_budget(e, shop) for e in (1.0, 2.0, 4.0, 8.0)]
    sigmas = [p.sigma for p in plans]
    assert sigmas == sorted(sigmas, reverse=True)
    for plan in plans:  # every round spends more; the whole federation stays within the budget
        assert list(plan.epsilon_after_round) == sorted(plan.epsilon_after_round)
        assert plan.epsilon_total <= plan.epsilon * (1 + 1e-9) and plan.epsilon_total >= 0.99 * plan.epsilon
        assert plan.noise_to_signal == pytest.approx(plan.sigma / 32)
    back = epsilon_for_sigma(plans[-1].sigma, Shop(units=800, rounds=4, batch_size=32, evaluations=0))
    alone = plans[-1].epsilon_after_round[-1]
    assert back.epsilon_after_round[-1] < alone  # without the statistics releases before training


def test_bad_arguments_get_a_clear_error():
    result = fedinterest("budget", "plan", "--users", "100", "--rounds", "2", "--unit", "example")
    assert result.returncode == 2 and "--examples" in result.stderr
    result = fedinterest("budget", "plan", "--users", "100", "--rounds", "2", "--epsilon", "1,x")
    assert result.returncode == 2 and "comma-separated" in result.stderr
