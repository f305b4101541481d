"""A ledger of the data, not of a path: the attacks of issue 24 (item 4), refused with real files.

1. two state directories (two working directories) on the same data: one ledger, the second sees
   the first's spend;
2. the last records of the ledger deleted: refused (its heads are kept elsewhere);
3. the ledger file deleted: refused (heads, and the state directory's cached releases);
4. a raised budget: refused without ``--raise-budget``, recorded with it; a reset is recorded and shown.
"""

import json
import os
import stat
import subprocess
import sys

import pytest

from fedinterest.client.ledger import (
    BINDING_FILE, LEDGER_FILE, MEMBERS_FILE, SECRET_FILE, LedgerError, PrivacyLedger, shop_ledger,
)
from fedinterest.client.privacy import PrivacyTerms

TERMS = PrivacyTerms("user", 1e-5, "prv")
PHASE = (1.0, 0.05, 100)  # one modest DP-SGD round


@pytest.fixture
def table(tiny_shop_table):
    return tiny_shop_table


def users_of(table):
    return sorted(table.frame["user_id"].astype(str).unique())


def spend(ledger, rounds=1, budget=8.0):
    ledger.fix_terms(TERMS)
    return [ledger.reserve("dp-sgd", [PHASE], budget).allowed for _ in range(rounds)]


def test_two_state_directories_on_the_same_data_share_one_ledger(tmp_path, table, ledger_home):
    first = shop_ledger(tmp_path / "cwd-a" / "state", table, budget=8.0)
    assert spend(first, 2) == [True, True]
    second = shop_ledger(tmp_path / "cwd-b" / "state", table, budget=8.0)
    assert second.path == first.path and str(second.path).startswith(str(ledger_home))
    assert first.spent > 0 and second.spent == pytest.approx(first.spent)  # the second sees the first's spend
    spend(second)
    assert len(PrivacyLedger.open(tmp_path / "cwd-a" / "state").releases) == 3  # one budget, both views


def test_the_same_data_in_another_working_directory_continues_in_train_local(tmp_path, synthetic_dir):
    """The CLI attack itself: train-local from two working directories (default state dirs) on the same data."""
    command = [sys.executable, "-m", "fedinterest", "train-local", "--data", str(synthetic_dir), "--shop", "shop_02",
               "--backbone", "tiny", "--epsilon", "8", "--rounds", "1", "--max-train-per-user", "1",
               "--max-test", "8", "--batch-size", "16", "--max-length", "32"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
    first = subprocess.run(command, cwd=tmp_path / "a", env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "ε spent 8.000" in first.stdout or "ε spent 7.99" in first.stdout  # the plan spends the whole budget
    second = subprocess.run(command, cwd=tmp_path / "b", env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode != 0 and "privacy budget" in second.stderr and "from 8.000" in second.stderr
    assert not (tmp_path / "b" / ".fedinterest" / "train-local" / "synthetic0-shop_02" / "taxonomy-20.json").exists()
    at = command.index("--epsilon")
    raised = subprocess.run(command[:at + 1] + ["16"] + command[at + 2:], cwd=tmp_path / "b", env=env,
                            capture_output=True, text=True, timeout=600)
    assert raised.returncode != 0 and "--raise-budget" in raised.stderr


def test_deleting_the_last_records_is_refused(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger, 3)
    lines = ledger.path.read_text().splitlines(keepends=True)
    ledger.path.write_text("".join(lines[:-2]))  # the hash chain of the prefix is still valid
    with pytest.raises(LedgerError, match="records were removed from its end"):
        PrivacyLedger.open(tmp_path / "state")
    with pytest.raises(LedgerError, match="records were removed"):  # from another state directory too
        shop_ledger(tmp_path / "elsewhere", table, budget=8.0)


def test_deleting_the_ledger_is_refused(tmp_path, table, ledger_home):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger)
    ledger.path.unlink()
    with pytest.raises(LedgerError, match="missing"):
        shop_ledger(tmp_path / "state", table, budget=8.0)
    with pytest.raises(LedgerError, match="missing"):
        shop_ledger(tmp_path / "fresh-state", table, budget=8.0)  # the home's head remembers it


def test_a_new_home_beside_cached_releases_is_refused(tmp_path, table, monkeypatch):
    state = tmp_path / "state"
    spend(shop_ledger(state, table, budget=8.0))
    (state / "taxonomy-20.json").write_text("{}")  # a DP release LocalShop cached under that ledger
    monkeypatch.setenv("FEDINTEREST_HOME", str(tmp_path / "another-home"))  # the home deleted or changed
    with pytest.raises(LedgerError, match="ledger home"):
        shop_ledger(state, table, budget=8.0)
    (state / BINDING_FILE).unlink()  # the pointer deleted as well: the cached release still tells
    with pytest.raises(LedgerError, match="missing.*taxonomy-20.json"):
        shop_ledger(state, table, budget=8.0)


def test_a_raised_budget_needs_the_flag_and_is_recorded(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger, 2)
    with pytest.raises(LedgerError, match="--raise-budget"):
        shop_ledger(tmp_path / "state", table, budget=16.0)
    assert not ledger.reserve("dp-sgd", [PHASE], 16.0).allowed  # nor through a release's own budget
    raised = shop_ledger(tmp_path / "state", table, budget=16.0, raise_budget=True)
    assert raised.read().recorded_budget == 16.0
    assert raised.reserve("dp-sgd", [PHASE], 16.0).allowed
    assert [r["kind"] for r in raised.read().records].count("budget") == 1
    shop_ledger(tmp_path / "state", table, budget=16.0, raise_budget=True)  # not above 16: nothing new
    assert [r["kind"] for r in raised.read().records].count("budget") == 1
    assert "budget RAISED" in raised.summary() and "to ε=16" in raised.summary()


def test_a_reset_is_recorded_and_shown(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger, 2)
    before = ledger.spent
    reset = shop_ledger(tmp_path / "state", table, budget=8.0, reset=True)
    assert reset.spent == 0.0 and reset.terms is None  # counted from zero, terms fixed anew
    spend(reset)
    assert 0 < reset.spent < before
    text = reset.summary()
    assert "RESET" in text and f"{before:.3f}" in text
    shown = subprocess.run([sys.executable, "-m", "fedinterest", "ledger", "show", "--state", str(tmp_path / "state")],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert shown.returncode == 0, shown.stderr
    assert "RESET" in shown.stdout and "--reset-ledger" in shown.stdout


def test_a_reset_accepts_a_truncated_ledger_on_the_record(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger, 3)
    lines = ledger.path.read_text().splitlines(keepends=True)
    ledger.path.write_text("".join(lines[:-2]))
    reset = shop_ledger(tmp_path / "state", table, budget=8.0, reset=True)
    last = reset.read().records[-1]
    assert last["kind"] == "reset" and "said 4 records" in last["reset"]["reason"]
    PrivacyLedger.open(tmp_path / "state")  # consistent again, the truncation visible in the reset


def test_removing_or_adding_users_lands_on_the_same_ledger(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger)
    users = users_of(table)
    fewer = shop_ledger(tmp_path / "fewer", table.without_users(users[:1]), budget=8.0)
    assert fewer.path == ledger.path and fewer.spent == pytest.approx(ledger.spent)
    more = PrivacyLedger.for_data(tmp_path / "more", [*users, "a-new-customer"])
    assert more.path == ledger.path


def test_disjoint_users_get_their_own_ledger(tmp_path, table):
    users = users_of(table)
    half = len(users) // 2
    first = shop_ledger(tmp_path / "one", table.without_users(users[:half]), budget=8.0)
    spend(first)
    second = shop_ledger(tmp_path / "two", table.without_users(users[half:]), budget=8.0)
    assert second.path != first.path and second.spent == 0.0


def test_data_overlapping_two_ledgers_merges_them_soundly(tmp_path):
    left = PrivacyLedger.for_data(tmp_path / "left", ["a", "b"])
    right = PrivacyLedger.for_data(tmp_path / "right", ["c", "d"])
    spend(left)
    spend(right, 2)
    assert left.path != right.path
    alone = max(left.spent, right.spent)
    both = PrivacyLedger.for_data(tmp_path / "both", ["b", "c"])
    assert both.spent > alone  # every phase of both ledgers composes in the merged one
    assert "merge" in [r.kind for r in both.releases]
    for state in ("left", "right"):  # each old pointer follows the merge to the one ledger
        assert PrivacyLedger.open(tmp_path / state).spent == pytest.approx(both.spent)
    assert PrivacyLedger.for_data(tmp_path / "a", ["a"]).path == both.path


def test_user_tags_are_keyed_never_the_raw_ids(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger)
    tags = (ledger.dir / MEMBERS_FILE).read_text().split()
    users = users_of(table)
    assert len(tags) == len(users) and all(len(t) == 32 and int(t, 16) >= 0 for t in tags)
    stored = "".join(p.read_text() for p in ledger.dir.iterdir() if p.is_file())
    stored += (tmp_path / "state" / BINDING_FILE).read_text()
    assert not any(f"\n{u}\n" in f"\n{stored}\n" or json.dumps(u) in stored for u in users)
    assert ledger.dir.name not in users and not set(tags) & set(users)


def test_the_home_and_its_files_are_private(tmp_path, table, ledger_home):
    os.chmod(ledger_home, 0o755)
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(ledger_home) == 0o700 and mode(ledger.dir) == 0o700 and mode(ledger_home / "ledgers") == 0o700
    assert mode(ledger_home / SECRET_FILE) == 0o600 and len((ledger_home / SECRET_FILE).read_bytes()) == 32
    for path in [ledger.path, ledger.dir / MEMBERS_FILE, tmp_path / "state" / BINDING_FILE,
                 *(ledger_home / "heads").iterdir(), *ledger_home.glob("*.lock"), *ledger.dir.glob("*.lock")]:
        assert mode(path) == 0o600, path
    assert ledger.path.name == LEDGER_FILE


def test_a_nodes_reset_label_is_recorded_once(tmp_path, table):
    ledger = shop_ledger(tmp_path / "state", table, budget=8.0)
    spend(ledger, 2)
    for _ in range(3):  # a node reads its config at every start: one reset per label
        again = shop_ledger(tmp_path / "state", table, budget=8.0, reset="2026-12-07")
    kinds = [r["kind"] for r in again.read().records]
    assert kinds.count("reset") == 1 and again.spent == 0.0
    assert "reset-ledger=2026-12-07" in again.summary()


def test_node_config_keys_for_the_ledger(tmp_path):
    from fedinterest.client.node import NodeSettings
    from fedinterest.common.config import ConfigError

    base = {"data-path": str(tmp_path), "state-dir": str(tmp_path / "state")}
    node = NodeSettings.from_node_config({**base, "raise-budget": True, "reset-ledger": "2026-12-07",
                                          "ledger-home": str(tmp_path / "home")})
    assert node.raise_budget and node.reset_ledger == "2026-12-07" and node.ledger_home == str(tmp_path / "home")
    plain = NodeSettings.from_node_config(base)
    assert not plain.raise_budget and plain.reset_ledger is None and plain.ledger_home is None
    with pytest.raises(ConfigError, match="reset-ledger"):
        NodeSettings.from_node_config({**base, "reset-ledger": True})


def test_simulated_shops_get_fresh_ledger_homes_in_their_run_folder(tmp_path, ledger_home):
    from fedinterest.simulations.runner import LEDGERS_NOTE, prepare
    from fedinterest.simulations.synthetic import SynthConfig

    prepared = prepare(tmp_path / "sim", shops=3, synth=SynthConfig(shops=3, users=120, days=20, seed=5))
    homes = [node["ledger-home"] for node in prepared.node_configs.values()]
    assert len(set(homes)) == 3 and all(h.startswith(str(tmp_path / "sim")) for h in homes)
    assert not (ledger_home / "ledgers").exists() or not any((ledger_home / "ledgers").iterdir())
    assert "fresh" in LEDGERS_NOTE
