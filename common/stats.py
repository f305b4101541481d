"""Shop statistics with a bounded contribution per user: the inputs of private platform statistics.

Each function returns a sum over the shop's users of one vector per user whose L2 norm is at
most 1, so adding or removing a user moves the sum by at most 1 (L2): Gaussian noise of standard
deviation σ then gives the Gaussian mechanism with noise multiplier σ per user.
"""

from __future__ import annotations

import numpy as np

from .data.schema import ACTION_WEIGHTS, EventTable
from .task.catalogue import Catalogue


def category_engagement(table: EventTable, catalogue: Catalogue, before: int | None = None) -> np.ndarray:
    """Σ over users of the user's engagement per catalogue category (view 1 … buy 4), L2-normalised.

    Events at or after ``before`` (the training period's end) and categories outside the
    catalogue are left out.
    """
    frame = table.frame
    if before is not None:
        frame = frame[frame["timestamp"].to_numpy() < before]
    position = catalogue.positions(frame["category"].to_numpy())
    known = position >= 0
    users = pd_codes(frame["user_id"].to_numpy()[known])
    weights = ACTION_WEIGHTS[frame["action"].to_numpy()[known]].astype(np.float64)
    per_user = np.zeros((users.max() + 1 if len(users) else 0, len(catalogue)))
    np.add.at(per_user, (users, position[known]), weights)
    norms = np.linalg.norm(per_user, axis=1, keepdims=True)
    return (per_user / np.maximum(norms, 1e-12)).sum(axis=0)


def pd_codes(values: np.ndarray) -> np.ndarray:
    """Dense 0..n-1 codes of ``values``."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64)
