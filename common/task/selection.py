"""Which of a user's examples a shop uses: decided by that user alone.

A release is calibrated to one privacy unit: removing a customer must change only that customer's
contribution. A selection over the whole shop (an even spread of N examples, a random N of all)
breaks that: removing one user shifts which examples of every other user are picked. Here each
example gets a keyed 64-bit rank from its user's id and its prediction time, and a user keeps the
``cap`` examples of lowest rank: the same examples whoever else is in the data. The key is the
shop's secret (``subset.key`` on a deployed node), so nobody outside can tell which were kept.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .examples import ExampleSet


def keyed_ranks(key: bytes, user_ids: np.ndarray, times: np.ndarray, purpose: str) -> np.ndarray:
    """A uint64 rank per example: BLAKE2b of (purpose, user id, time) under ``key``."""
    label = purpose.encode()
    out = np.empty(len(times), dtype=np.uint64)
    for i, (user, t) in enumerate(zip(user_ids, times)):
        digest = hashlib.blake2b(f"{user}\x1f{int(t)}".encode(), key=key[:64], digest_size=8, person=label[:16])
        out[i] = int.from_bytes(digest.digest(), "big")
    return out


def per_user_cap(users: np.ndarray, ranks: np.ndarray, cap: int | None) -> np.ndarray:
    """Sorted indices of each user's ``cap`` lowest-ranked examples (all of them when ``cap`` is None)."""
    if cap is None:
        return np.arange(len(users))
    if cap < 1:
        raise ValueError(f"a per-user cap must be >= 1, got {cap}")
    order = np.lexsort((ranks, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[position < cap])


def select_per_user(examples: ExampleSet, key: bytes, cap: int | None, purpose: str) -> np.ndarray:
    """Indices of the examples kept when each user keeps at most ``cap`` (by the keyed rank)."""
    if cap is None or not len(examples):
        return np.arange(len(examples))
    user_ids = examples.events.user_ids[examples.user]
    return per_user_cap(examples.user, keyed_ranks(key, user_ids, examples.t, purpose), cap)
