"""Privacy planning over all rounds and the ledger of truth: locked, re-read, reserved, append-only."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from fedinterest.client.ledger import BINDING_FILE, LEDGER_FILE, LedgerError, PrivacyLedger
from fedinterest.client.privacy import DEFAULT_DELTA, PrivacyConfig, PrivacyTerms, epsilon_spent, plan_privacy
from fedinterest.common.config import ConfigError

TERMS = PrivacyTerms("user", 1e-5, "prv")


def make_plan(rounds=4, epsilon=8.0, accountant="prv", prior=()):
    return plan_privacy(epsilon=epsilon, delta=1e-5, sample_rate=0.02, steps_per_round=50, rounds=rounds,
                        max_grad_norm=1.0, accountant=accountant, prior=prior)


def planned_ledger(path, rounds=4, epsilon=8.0, accountant="prv"):
    ledger = PrivacyLedger.open(path)
    ledger.fix_terms(PrivacyTerms("user", 1e-5, accountant))
    plan = ledger.fix_plan(lambda state: make_plan(rounds, epsilon, accountant, state.history))
    return ledger, plan


def reserve_round(ledger, plan, budget=8.0, server_round=None):
    return ledger.reserve("dp-sgd", [plan.phase], budget, server_round)


@pytest.mark.parametrize("accountant, epsilon", [("prv", 8.0), ("prv", 1.0), ("rdp", 8.0)])
def test_epsilon_after_all_rounds_matches_the_plan(tmp_path, accountant, epsilon):
    ledger, plan = planned_ledger(tmp_path, 4, epsilon, accountant)
    spent = [reserve_round(ledger, plan, epsilon, r + 1).epsilon_after for r in range(4)]
    assert spent == sorted(spent) and spent[0] > 0
    assert abs(spent[-1] - epsilon) / epsilon < 0.01
    # the same history, accounted from scratch
    assert spent[-1] == pytest.approx(epsilon_spent([(plan.noise_multiplier, 0.02, 200)], 1e-5, accountant))


def test_the_plan_composes_with_what_was_released_before(tmp_path):
    ledger = PrivacyLedger.open(tmp_path)
    ledger.fix_terms(TERMS)
    assert ledger.reserve("statistics", [(1.5, 1.0, 1)], budget=8.0).allowed
    plan = ledger.fix_plan(lambda state: make_plan(2, 8.0, "prv", state.history))
    alone = make_plan(2, 8.0, "prv")
    assert plan.noise_multiplier > alone.noise_multiplier  # less left for training: more noise
    for r in range(2):
        assert reserve_round(ledger, plan, 8.0, r + 1).allowed
    assert 7.9 < ledger.spent <= 8.0
    assert not reserve_round(ledger, plan, 8.0, 3).allowed


def test_the_round_that_would_overflow_is_refused(tmp_path):
    ledger, plan = planned_ledger(tmp_path, rounds=2)
    for _ in range(2):
        assert reserve_round(ledger, plan).allowed
    decision = reserve_round(ledger, plan)
    assert not decision.allowed
    assert decision.epsilon_after > 8.0
    assert "budget" in decision.reason and "8" in decision.reason and "per user" in decision.reason
    assert len(ledger.rounds) == 2  # a refused release leaves no record


def test_the_server_can_lower_the_budget_never_raise_it(tmp_path):
    config = PrivacyConfig(epsilon=8.0)
    assert config.budget(server_epsilon=4.0) == 4.0
    assert config.budget(server_epsilon=100.0) == 8.0
    assert config.budget(server_epsilon=None) == 8.0
    ledger, plan = planned_ledger(tmp_path)
    reserve_round(ledger, plan)
    reserve_round(ledger, plan)
    cap = ledger.spent + 0.1  # a server cap just above what is spent: the next round does not fit
    assert not reserve_round(ledger, plan, budget=config.budget(cap)).allowed
    assert reserve_round(ledger, plan, budget=config.budget(100.0)).allowed


def test_defaults_are_user_level_prv_and_delta_below_one_over_n():
    config = PrivacyConfig()
    assert (config.unit, config.accountant) == ("user", "prv")
    assert config.delta_for(500) == DEFAULT_DELTA == config.delta_for(90_000)  # public: not the shop's size
    assert PrivacyConfig(unit="example").terms(12_000).delta == DEFAULT_DELTA
    with pytest.raises(ConfigError, match="not below 1/100000"):
        config.delta_for(100_000)
    assert PrivacyConfig(delta=1e-6).delta_for(500) == 1e-6
    with pytest.raises(ConfigError, match="not below 1/500"):
        PrivacyConfig(delta=0.01).delta_for(500)
    with pytest.raises(ConfigError, match="epsilon"):
        PrivacyConfig(epsilon=-1)
    with pytest.raises(ConfigError, match="no noise level"):
        plan_privacy(epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps_per_round=1000, rounds=10, max_grad_norm=1.0)


def test_terms_and_plan_are_fixed_once_made(tmp_path):
    ledger, plan = planned_ledger(tmp_path)
    with pytest.raises(LedgerError, match="fixed once a release is made"):
        ledger.fix_terms(PrivacyTerms("example", 1e-5, "prv"))
    other = ledger.fix_plan(lambda state: make_plan(rounds=100))
    assert other == plan  # the first plan stands


def test_ledger_survives_reopening(tmp_path):
    ledger, plan = planned_ledger(tmp_path)
    reserve_round(ledger, plan, server_round=3)
    again = PrivacyLedger.open(tmp_path)
    assert again.plan == plan
    assert again.rounds == ledger.rounds and again.rounds[0].server_round == 3
    assert again.spent == pytest.approx(ledger.spent)


def _drop_second_release(text):
    lines = text.splitlines(keepends=True)
    return "".join(lines[:3] + lines[4:])


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # torn write
        lambda text: "not json at all",
        lambda text: text.replace('"steps_per_round": 50', '"steps_per_round": 5'),  # edited: checksum breaks
        _drop_second_release,  # a record removed: the chain breaks
        lambda text: "",
    ],
    ids=["torn", "garbage", "edited", "removed", "empty"],
)
def test_a_damaged_ledger_is_an_error_never_a_reset(tmp_path, damage):
    ledger, plan = planned_ledger(tmp_path)
    for _ in range(3):
        reserve_round(ledger, plan)
    path = tmp_path / LEDGER_FILE
    path.write_text(damage(path.read_text()))
    with pytest.raises(LedgerError, match="damaged.*never reset automatically"):
        PrivacyLedger.open(tmp_path)


def test_many_views_of_one_state_directory_share_one_budget(tmp_path):
    """Four handles, as four LocalShop views would hold, interleaved: one budget, every release listed."""
    views = [PrivacyLedger.open(tmp_path) for _ in range(4)]
    for view in views:
        view.fix_terms(TERMS)
    plans = [view.fix_plan(lambda state: make_plan(rounds=2)) for view in views]
    assert len({p.noise_multiplier for p in plans}) == 1
    allowed = sum(reserve_round(views[i % 4], plans[0], server_round=i).allowed for i in range(12))
    assert allowed == 2
    assert len(views[3].rounds) == 2 and views[0].spent <= 8.0


def _spend(state_dir: str, attempts: int, results) -> None:
    ledger = PrivacyLedger(state_dir)
    ledger.fix_terms(TERMS)
    plan = ledger.fix_plan(lambda state: make_plan(rounds=1))
    small = (plan.noise_multiplier, plan.sample_rate, 5)  # a tenth of the planned round per release
    allowed = 0
    for _ in range(attempts):
        allowed += ledger.reserve("dp-sgd", [small], 8.0).allowed
    results.put(allowed)


def test_processes_racing_for_the_last_of_a_budget_never_overspend(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_spend, args=(str(tmp_path), 15, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
        assert w.exitcode == 0
    allowed = results.get(timeout=5) + results.get(timeout=5)
    ledger = PrivacyLedger.open(tmp_path)
    assert allowed == len(ledger.releases)  # every release is in the ledger, no record lost
    assert 9 <= allowed <= 10  # the planned budget holds about ten such releases
    assert ledger.spent <= 8.0 * (1 + 1e-9)
    assert [r.seq for r in ledger.releases] == list(range(1, allowed + 1))


def read_rounds(state):
    if not (state / BINDING_FILE).exists():  # the state directory points to the data's ledger in the home
        return []
    return [r.__dict__ for r in PrivacyLedger.open(state).rounds]


def train_local(synthetic_dir, state, rounds):
    return [
        sys.executable, "-m", "fedinterest", "train-local", "--data", str(synthetic_dir), "--shop", "shop_02",
        "--backbone", "tiny", "--epsilon", "8", "--rounds", str(rounds), "--max-train-per-user", "1", "--max-test", "16",
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
    seqs = [r["seq"] for r in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(before) + 2))  # nothing lost, nothing in between
    kinds = [r.kind for r in PrivacyLedger.open(state).releases]
    assert kinds.count("statistics") == 2  # label space and priors were released once, then reused
    assert after[len(before)]["epsilon"] > before[-1]["epsilon"]


def test_shop_views_built_for_configs_the_server_varies_share_one_budget(tmp_path, synthetic_dir):
    """The reviewer's attack: lr × 1.0001 per message gives a fresh LocalShop view; the ledger still holds."""
    from fedinterest.client.node import NodeSettings, load_shop
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.settings import LocalTraining, RoundConfig, TaskSpec
    from fedinterest.common.task import build_taxonomy, default_split

    table = load_events(synthetic_dir)
    config = TaskConfig()
    split = default_split(table, config)
    spec = TaskSpec(build_taxonomy(table, 20, before=split.val_start), split, config)
    node = NodeSettings.from_node_config({
        "data-path": str(synthetic_dir), "shop": "shop_02", "state-dir": str(tmp_path / "state"),
        "epsilon": 8.0, "max-train-per-user": 1, "seed": 3, "partition-id": 0})  # a simulated node: seeds allowed
    released, views = 0, set()
    for message in range(8):
        training = LocalTraining(batch_size=16, physical_batch_size=16, learning_rate=0.01 * 1.0001 ** message,
                                 max_length=32)
        shop = load_shop(node, RoundConfig(round=message + 1, rounds=2, backbone="tiny", training=training), spec)
        views.add(id(shop))
        outcome = shop.train_round(total_rounds=2, server_round=message + 1, seed=message)
        released += not outcome.declined
    assert len(views) == 8  # every message really got a view of its own
    ledger = PrivacyLedger.open(tmp_path / "state")
    assert released == 2 == len(ledger.rounds)  # the budget was planned for two rounds; every release listed
    assert ledger.spent <= 8.0


def test_two_processes_on_one_state_directory_release_no_more_than_the_plan(tmp_path, synthetic_dir):
    state = tmp_path / "shop"
    commands = [train_local(synthetic_dir, state, rounds=3) + ["--lr", lr] for lr in ("0.005", "0.00500001")]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
    trained = sum(out.count("ε spent") for out, _ in outputs)
    assert any("declined: privacy budget" in out for out, _ in outputs)  # six rounds asked, the plan holds three
    ledger = PrivacyLedger.open(state)
    assert trained == len(ledger.rounds) <= 3  # every round either process trained is in the ledger
    assert ledger.spent <= 8.0 * (1 + 1e-9)
    assert [r.seq for r in ledger.releases] == list(range(1, len(ledger.releases) + 1))
