"""Every release a shop makes is calibrated to one customer: remove each customer in turn, measure the shift.

The noise of a release assumes that removing one privacy unit moves the released vector by at most
its sensitivity (1 at user level: each customer's contribution has L2 norm <= 1). That holds only
if which examples enter depends on each customer alone. For one shop, with a public label space
and calendar, these tests remove every customer in turn and check the largest shift of

- the evaluation counts (the test examples scored: at most ``per_user`` of each customer, by a keyed rank),
- the engagement statistics and the label flows (the statistics rounds),

against the sensitivity the noise assumes, and that the training subset (``max-train-per-user``)
of every other customer is unchanged. The selection it replaced (an even spread of N examples
over the shop) is run too: it moves the release by far more than one customer can.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedinterest.client.statistics import sensitivity
from fedinterest.common.config import TaskConfig
from fedinterest.common.evaluation import unit_sum
from fedinterest.common.stats import category_engagement, label_flows, transition_rows
from fedinterest.common.task import Catalogue, build_taxonomy, default_split, prepare_task
from fedinterest.common.task.selection import select_per_user
from fedinterest.simulations.central import even_subset
from fedinterest.simulations.release_audit import scored_rows

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def shop(tiny_shop_table):
    """The smallest synthetic shop with a public label space and calendar (both fixed before removal)."""
    config = TaskConfig()
    split = default_split(tiny_shop_table, config)
    taxonomy = build_taxonomy(tiny_shop_table, 20, before=split.val_start)
    return {"table": tiny_shop_table, "config": config, "split": split, "taxonomy": taxonomy,
            "catalogue": Catalogue.observed(tiny_shop_table), "users": sorted(tiny_shop_table.frame["user_id"].unique())}


def task_without(shop, user=None):
    table = shop["table"] if user is None else shop["table"].without_users([user])
    return table, prepare_task(table, shop["config"], taxonomy=shop["taxonomy"], split=shop["split"],
                               require_examples=False)


def keyed_evaluation(task, per_user=1):
    test = task.test
    chosen = test.subset(select_per_user(test, KEY, per_user, "evaluation"))
    return unit_sum(scored_rows(chosen, task.taxonomy.other), chosen.user)


def even_spread(task, limit=200):
    """The evaluation selection this replaced: an even spread of ``limit`` examples ordered user by user."""
    chosen = even_subset(task.test, limit)
    return unit_sum(scored_rows(chosen, task.taxonomy.other), chosen.user)


def largest_shift(shop, release) -> float:
    full = release(*task_without(shop))
    return max(float(np.linalg.norm(full - release(*task_without(shop, user)))) for user in shop["users"])


def test_an_evaluation_release_moves_by_at_most_one_customer(shop):
    for per_user in (1, 3):
        shift = largest_shift(shop, lambda table, task: keyed_evaluation(task, per_user))
        assert 0 < shift <= sensitivity("user") + 1e-9, (per_user, shift)


def test_the_even_spread_it_replaced_moved_by_many_customers(shop):
    """The broken selection: removing one customer re-picks the examples of every later one."""
    assert largest_shift(shop, lambda table, task: even_spread(task)) > 3 * sensitivity("user")


def test_the_statistics_releases_move_by_at_most_one_customer(shop):
    before = shop["split"].val_start
    engagement = largest_shift(shop, lambda table, task: category_engagement(table, shop["catalogue"], before))
    rows = transition_rows(shop["taxonomy"].n_classes)
    flows = largest_shift(shop, lambda table, task: label_flows(task.train, rows).ravel())
    assert 0 < engagement <= 1 + 1e-9 and 0 < flows <= 1 + 1e-9, (engagement, flows)


def test_the_training_subset_of_every_other_customer_is_unchanged(shop):
    """``max-train-per-user``: a customer's removal changes no other customer's training examples."""
    def chosen(task, missing=None):
        train = task.train
        kept = train.subset(select_per_user(train, KEY, 2, "train"))
        ids = kept.events.user_ids[kept.user]
        return {(u, int(t)) for u, t in zip(ids, kept.t) if u != missing}

    _, full = task_without(shop)
    everyone = chosen(full)
    assert len(everyone) < len(full.train)  # the cap binds
    for user in shop["users"][::4]:
        _, without = task_without(shop, user)
        assert chosen(without) == {pair for pair in everyone if pair[0] != user}, user


# ----------------------------------------------------------------------------- the label space's domain


def with_victim(table, categories=("victim-only",), events=6):
    """``table`` plus one customer who alone touched ``categories`` (a few views and a buy each)."""
    import pandas as pd

    from fedinterest.common.data import EventTable

    frame = table.frame
    t0 = int(frame["timestamp"].min()) + 86_400
    rows = [{"user_id": "victim", "item_id": f"v{i}", "category": c, "action": 3 if i == 0 else 0,
             "timestamp": t0 + 3600 * i} for c in categories for i in range(events)]
    grown = pd.concat([frame.astype({k: str for k in ("user_id", "item_id", "category")}), pd.DataFrame(rows)],
                      ignore_index=True)
    for column in ("user_id", "item_id", "category"):
        grown[column] = pd.Categorical(grown[column])
    grown["action"] = grown["action"].astype(np.int8)
    return EventTable(grown, table.report, table.category_names, table.item_titles, table.public_categories)


def test_a_public_catalogue_does_not_depend_on_any_customer(shop):
    """A dataset that ships its catalogue (a manifest's category list) gives the same domain with or without
    a customer who alone touched a category."""
    table = shop["table"]
    assert table.public_categories is not None
    assert Catalogue.public(with_victim(table)) == Catalogue.public(table)
    assert "victim-only" not in Catalogue.public(with_victim(table)).categories
    assert "victim-only" in Catalogue.observed(with_victim(table)).categories  # what reading the events gave


def test_a_category_only_one_customer_touched_enters_a_private_domain_with_probability_at_most_its_delta(shop):
    """Without a catalogue the domain is a DP partition selection: a category only the victim touched passes
    its threshold with probability at most the δ the ledger records for it (measured: 200,000 draws of the
    release's own noise at a δ large enough to see), where reading the events made it a candidate always."""
    from fedinterest.client.statistics import PARTITION_CATEGORIES_PER_USER, gaussian, partition_counts, partition_threshold

    table = with_victim(shop["table"], categories=tuple(f"victim-{k}" for k in range(3)))
    categories, values = partition_counts(table)
    mine = [categories.index(f"victim-{k}") for k in range(3)]
    assert all(0 < values[i] <= 1 for i in mine) and np.linalg.norm(values[mine]) <= 1 + 1e-9
    sigma, delta = 2.0, 0.02  # a large δ, so that a miscalibrated threshold would show
    tau = partition_threshold(sigma, delta)
    draws = 200_000
    noise = gaussian(draws * 3, sigma, seed=5, tag="domain-test").reshape(draws, 3)
    included = (values[mine] + noise > tau).any(axis=1).mean()
    standard_error = np.sqrt(delta * (1 - delta) / draws)
    assert included <= delta + 3 * standard_error, (included, delta)
    assert included > 0  # the test can see inclusions: the bound is not vacuous
    assert PARTITION_CATEGORIES_PER_USER >= 3


def test_a_private_domain_is_charged_to_the_ledger_with_its_delta(shop, tmp_path):
    from fedinterest.client.ledger import PrivacyLedger
    from fedinterest.client.privacy import PrivacyTerms
    from fedinterest.client.statistics import PARTITION_DELTA_SHARE, release_partition_selection
    from fedinterest.common.data import EventTable

    table = shop["table"]
    table = EventTable(table.frame, table.report, table.category_names, table.item_titles, None)  # no catalogue
    ledger = PrivacyLedger.open(tmp_path / "state")
    terms = ledger.fix_terms(PrivacyTerms("user", 1e-5, "prv"))
    outcome, catalogue = release_partition_selection(table, shop["split"].val_start, ledger=ledger, terms=terms,
                                                     budget=8.0, seed=1)
    assert not outcome.declined and catalogue is not None and 0 < len(catalogue) <= len(Catalogue.observed(table))
    state = ledger.read()
    assert state.releases[-1].delta == PARTITION_DELTA_SHARE * 1e-5
    assert state.accountant_delta == pytest.approx(1e-5 * (1 - PARTITION_DELTA_SHARE))
