"""Splitting one event log into simulated shops.

* ``natural``: the data's own shop id (``merchant_id``: synthetic shops, Tmall ``seller_id``);
  with more merchants than shops wanted, the largest ones are kept.
* ``dirichlet``: label skew over users, each user labelled by their top category
  (flwr-datasets ``DirichletPartitioner``); a user's events stay in one shop.
* ``iid``: users spread uniformly at random (flwr-datasets ``IidPartitioner``).
* ``auto``: natural where the data has merchants, else dirichlet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedinterest.common.data.schema import ACTION_WEIGHTS, DataError, EventTable

METHODS = ("auto", "natural", "dirichlet", "iid")


def partition_events(
    table: EventTable,
    shops: int | None = None,
    method: str = "auto",
    alpha: float = 0.5,
    seed: int = 0,
) -> dict[str, EventTable]:
    """Shop id -> that shop's events (names and titles are shared catalogue data)."""
    if method not in METHODS:
        raise DataError(f"unknown partitioning '{method}'; use one of {', '.join(METHODS)}")
    if method == "auto":
        method = "natural" if table.has_merchants else "dirichlet"
    if method == "natural":
        shop_of_row = _natural(table, shops)
    else:
        if not shops or shops < 1:
            raise DataError(f"partitioning '{method}' needs the number of shops (--shops N)")
        shop_of_row = _by_user(table, shops, method, alpha, seed)
    return {str(shop): table.part(shop_of_row == shop, str(shop))
            for shop in sorted(pd.unique(shop_of_row[shop_of_row != ""]))}


def _natural(table: EventTable, shops: int | None) -> np.ndarray:
    if not table.has_merchants:
        raise DataError(
            f"{table.report.source}: has no shop id (merchant_id); use --partition dirichlet or iid"
        )
    merchant = table.frame["merchant_id"].astype(str).to_numpy()
    if shops:
        sizes = pd.Series(merchant).value_counts()
        keep = set(sorted(sizes.index, key=lambda m: (-sizes[m], m))[:shops])
        merchant = np.where(np.isin(merchant, list(keep)), merchant, "")
    return merchant


def _by_user(table: EventTable, shops: int, method: str, alpha: float, seed: int) -> np.ndarray:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    frame = table.frame
    users = frame["user_id"].cat.codes.to_numpy()
    n_users = len(frame["user_id"].cat.categories)
    if n_users < shops:
        raise DataError(f"{table.report.source}: {n_users} users cannot fill {shops} shops")
    top = _top_category_per_user(frame, n_users)
    dataset = Dataset.from_dict({"user": np.arange(n_users), "label": top})
    if method == "iid":
        rng = np.random.default_rng(seed)
        dataset = dataset.select(rng.permutation(n_users))
        partitioner = IidPartitioner(num_partitions=shops)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=shops,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min(10, n_users // (2 * shops)),
            self_balancing=True,
            seed=seed,
        )
    partitioner.dataset = dataset
    shop_of_user = np.empty(n_users, dtype=object)
    for pid in range(shops):
        shop_of_user[np.asarray(partitioner.load_partition(pid)["user"])] = f"shop_{pid:02d}"
    return shop_of_user[users].astype(str)


def _top_category_per_user(frame: pd.DataFrame, n_users: int) -> np.ndarray:
    weights = ACTION_WEIGHTS[frame["action"].to_numpy()]
    grouped = pd.DataFrame(
        {"u": frame["user_id"].cat.codes.to_numpy(), "c": frame["category"].cat.codes.to_numpy(), "w": weights}
    ).groupby(["u", "c"], sort=False)["w"].sum().reset_index()
    best = grouped.sort_values(["u", "w", "c"], ascending=[True, False, True]).drop_duplicates("u")
    top = np.zeros(n_users, dtype=np.int64)
    top[best["u"].to_numpy()] = best["c"].to_numpy()
    return top
