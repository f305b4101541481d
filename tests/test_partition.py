"""Partitioning one log into simulated shops."""

from __future__ import annotations

import numpy as np
import pytest

from fedinterest.common.data import DataError, load_events
from fedinterest.simulations.partition import partition_events


def strip_merchants(table):
    from fedinterest.common.data import EventTable

    return EventTable(table.frame.drop(columns=["merchant_id"]), table.report, table.category_names)


def test_natural_uses_the_shop_id(synthetic_dir):
    table = load_events(synthetic_dir)
    shops = partition_events(table)
    assert sorted(shops) == [f"shop_{i:02d}" for i in range(5)]
    assert sum(len(s) for s in shops.values()) == len(table)
    for name, shop in shops.items():
        assert set(shop.frame.merchant_id.astype(str)) == {name}


def test_natural_keeps_the_largest_merchants(synthetic_dir):
    table = load_events(synthetic_dir)
    sizes = table.frame.merchant_id.astype(str).value_counts()
    shops = partition_events(table, shops=2, method="natural")
    assert set(shops) == set(sizes.index[:2])


@pytest.mark.parametrize("method", ["dirichlet", "iid"])
def test_user_partitions_keep_users_whole(synthetic_dir, method):
    table = strip_merchants(load_events(synthetic_dir))
    shops = partition_events(table, shops=4, method=method, alpha=0.3, seed=1)
    assert len(shops) == 4
    assert sum(len(s) for s in shops.values()) == len(table)
    users = [set(s.frame.user_id.astype(str)) for s in shops.values()]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not users[i] & users[j]
    sizes = np.array([len(u) for u in users])
    assert sizes.min() > 0


def test_dirichlet_is_more_skewed_than_iid(synthetic_dir):
    table = strip_merchants(load_events(synthetic_dir))

    def skew(method):
        shops = partition_events(table, shops=4, method=method, alpha=0.1, seed=2)
        shares = []
        for s in shops.values():
            counts = s.frame.category.astype(str).value_counts(normalize=True)
            shares.append(counts.iloc[0])
        return np.mean(shares)

    assert skew("dirichlet") > skew("iid")


def test_auto_without_merchants_needs_shop_count(synthetic_dir):
    table = strip_merchants(load_events(synthetic_dir))
    with pytest.raises(DataError, match="--shops"):
        partition_events(table, method="auto")
    with pytest.raises(DataError, match="no shop id"):
        partition_events(table, method="natural")
