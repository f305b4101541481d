"""Federated evaluation as a bounded-contribution sum: what a shop releases, and what the server reads.

A shop's evaluation is a vector of counts over its test examples (``FIELDS``). Each privacy unit
(a user, or one example) contributes the mean of its examples' count vectors, scaled so its L2
norm is at most 1; the shop adds Gaussian noise for that sensitivity and the secure sum adds the
shops up. The server divides counts by counts: the metrics are averages over units (each user
weighs the same), and nothing tells one shop's figures.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import label_ranks

#: The counts a shop releases, in order. Named examples count in ``n``, the rest in ``n_other``;
#: ``loss`` is the cross-entropy of a named example, capped at ``LOSS_CAP`` and divided by it.
FIELDS = ("n", "n_other", "hit@1", "hit@5", "n_migrating", "mig_hit@1", "mig_hit@5", "loss")
LOSS_CAP = 10.0
#: Largest L2 norm of one example's vector: a named, migrating example hit at 1 and 5 with loss at the cap.
EXAMPLE_NORM = math.sqrt(len(FIELDS) - 1)


def example_counts(probs: np.ndarray, labels: np.ndarray, current: np.ndarray, other: int) -> np.ndarray:
    """One row of ``FIELDS`` per example, each entry in [0, 1] (``other`` is never ranked)."""
    probs = np.array(probs, dtype=np.float64)
    labels, current = np.asarray(labels), np.asarray(current)
    rows = np.zeros((len(labels), len(FIELDS)))
    if not len(labels):
        return rows
    named = labels != other
    loss = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))
    probs[:, other] = -np.inf
    ranks = label_ranks(probs, labels)
    mig = (labels != current) & named
    rows[:, 0] = named
    rows[:, 1] = ~named
    rows[:, 2] = named & (ranks == 1)
    rows[:, 3] = named & (ranks <= 5)
    rows[:, 4] = mig
    rows[:, 5] = mig & (ranks == 1)
    rows[:, 6] = mig & (ranks <= 5)
    rows[:, 7] = np.where(named, np.minimum(loss, LOSS_CAP) / LOSS_CAP, 0.0)
    return rows


def unit_sum(rows: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Σ over privacy units of (mean of the unit's rows) / ``EXAMPLE_NORM``: each unit moves it by ≤ 1 in L2."""
    if not len(rows):
        return np.zeros(len(FIELDS))
    _, inverse, sizes = np.unique(np.asarray(units), return_inverse=True, return_counts=True)
    return (rows / sizes[inverse][:, None]).sum(axis=0) / EXAMPLE_NORM


def metrics_from_sum(total: np.ndarray, min_count: float = 1.0) -> dict[str, float]:
    """Metrics from the (noised) sum of every shop's ``unit_sum``; a ratio over fewer than
    ``min_count`` units is left out, and noise never pushes a rate outside [0, 1]."""
    counts = dict(zip(FIELDS, np.asarray(total, dtype=np.float64) * EXAMPLE_NORM))
    n, n_mig = counts["n"], counts["n_migrating"]
    out = {"n": max(n, 0.0), "n_migrating": max(n_mig, 0.0)}

    def rate(numerator: str, denominator: float, name: str) -> None:
        if denominator >= min_count:
            out[name] = float(np.clip(counts[numerator] / denominator, 0.0, 1.0))

    rate("hit@1", n, "acc@1")
    rate("hit@5", n, "hr@5")
    rate("mig_hit@1", n_mig, "mig_acc@1")
    rate("mig_hit@5", n_mig, "mig_hr@5")
    if n >= min_count:
        out["loss"] = float(np.clip(counts["loss"] / n, 0.0, 1.0) * LOSS_CAP)
    if n + counts["n_other"] >= min_count:
        out["other_share"] = float(np.clip(counts["n_other"] / (n + counts["n_other"]), 0.0, 1.0))
    return out
