"""Shop statistics with a bounded contribution per user: the inputs of private platform statistics.

Each function returns a sum over the shop's users of one vector per user whose L2 norm is at
most 1, so adding or removing a user moves the sum by at most 1 (L2): Gaussian noise of standard
deviation σ then gives the Gaussian mechanism with noise multiplier σ per user.
"""

from __future__ import annotations

import numpy as np

from .data.schema import ACTION_WEIGHTS, EventTable
from .task.catalogue import Catalogue
from .task.examples import ExampleSet
from .task.features import BASELINE_FEATURE, HistoryFeatures
from .task.taxonomy import Taxonomy


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


def label_flows(examples: ExampleSet, rows: int) -> np.ndarray:
    """Σ over users of the user's label flows, L2-normalised per user, shape (rows + 1, classes).

    Row ``i < rows`` counts (current interest i → label) over the user's training examples (only
    the first ``rows`` classes, the most engaged, get a row); the last row counts the labels.
    """
    n_classes = examples.events.n_classes
    _, cells, values = user_flows(examples, rows)
    return np.bincount(cells, weights=values, minlength=(rows + 1) * n_classes).reshape(rows + 1, n_classes)


def user_flows(examples: ExampleSet, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's L2-normalised label flows, sparse: (user code, flat cell of (rows + 1, classes), value)."""
    n_classes = examples.events.n_classes
    users = pd_codes(examples.user)
    label = examples.label.astype(np.int64)
    moving = examples.current < rows
    owner = np.concatenate([users[moving], users])
    cell = np.concatenate([examples.current[moving].astype(np.int64) * n_classes + label[moving],
                           rows * n_classes + label])
    if not len(cell):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    keys, counts = np.unique(owner * ((rows + 1) * n_classes) + cell, return_counts=True)
    key_user, key_cell = keys // ((rows + 1) * n_classes), keys % ((rows + 1) * n_classes)
    norms = np.sqrt(np.bincount(key_user, weights=counts.astype(float) ** 2))
    return key_user, key_cell, counts / norms[key_user]


def own_flow_corrections(examples: ExampleSet, rows: int, counts: np.ndarray, shares: HistoryFeatures | None = None,
                         alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per example, how the priors change without the example's own user: leave-one-user-out.

    ``counts`` are the summed flows the priors came from (rows + 1, classes). For each example the
    classes where its user's own flows sit get (Δ log popularity, Δ log transition from the current
    interest, up to a per-example constant that a softmax ignores; and the probability mass the
    user's own flows add to the history-weighted transition mixture, given the history ``shares``).
    Padded: classes (n, k) with -1, values (n, k, 3). Training on priors that hold the example's own
    label would teach the scorer to trust them more than they deserve on unseen users.
    """
    n_classes = examples.events.n_classes
    n = len(examples)
    user_code = pd_codes(examples.user)
    key_user, key_cell, values = user_flows(examples, rows)
    counts = np.clip(np.asarray(counts, dtype=np.float64), 0, None)
    popularity = (counts[-1] + alpha) / (counts[-1] + alpha).sum()
    # each example's own cells: its user's label-total row, and its user's row of its current interest
    start = np.searchsorted(key_user, np.arange(user_code.max() + 2 if n else 1))
    row_totals = counts[:rows].sum(axis=1) + alpha
    pairs: list[tuple] = []  # (example, class, Δlog pop, Δlog trans, own mixture mass)
    for e in range(n):
        u, current = user_code[e], int(examples.current[e])
        lo, hi = start[u], start[u + 1]
        cells, own = key_cell[lo:hi], values[lo:hi]
        row, cls = cells // n_classes, cells % n_classes
        delta: dict[int, list[float]] = {}
        for c, v in zip(cls[row == rows], own[row == rows]):
            before = counts[rows, c] + alpha
            delta.setdefault(int(c), [0.0, 0.0, 0.0])[0] = np.log(max(counts[rows, c] - v, 0) + alpha) - np.log(before)
        if current < rows:
            for c, v in zip(cls[row == current], own[row == current]):
                before = counts[current, c] + alpha * popularity[c]
                after = max(counts[current, c] - v, 0) + alpha * popularity[c]
                delta.setdefault(int(c), [0.0, 0.0, 0.0])[1] = np.log(after) - np.log(before)
        if shares is not None:
            share = {int(h): float(w) for h, w in zip(shares.classes[e], shares.values[e, :, BASELINE_FEATURE])
                     if 0 <= h < rows}
            for h, c, v in zip(row, cls, own):
                if int(h) in share:  # never below what the cell holds: noised counts can be smaller than v
                    mass = min(v, counts[h, c])
                    delta.setdefault(int(c), [0.0, 0.0, 0.0])[2] += share[int(h)] * mass / row_totals[h]
        pairs.extend((e, c, *d) for c, d in delta.items())
    table = np.array(pairs, dtype=np.float64).reshape(-1, 5)
    example = table[:, 0].astype(np.int64)
    per_example = np.bincount(example, minlength=n)
    width = max(int(per_example.max()) if n else 1, 1)
    slot = np.arange(len(example)) - np.repeat(np.cumsum(per_example) - per_example, per_example)
    classes = np.full((n, width), -1, dtype=np.int64)
    out = np.zeros((n, width, 3), dtype=np.float32)
    classes[example, slot] = table[:, 1].astype(np.int64)
    out[example, slot] = table[:, 2:]
    return classes, out


def popularity_of(engagement: np.ndarray, catalogue: Catalogue, taxonomy: Taxonomy) -> np.ndarray:
    """Per-class engagement (``other``: everything else) from a per-catalogue-category vector."""
    engagement = np.clip(np.asarray(engagement, dtype=np.float64), 0, None)
    position = {c: i for i, c in enumerate(catalogue.categories)}
    named = np.array([engagement[position[c]] if c in position else 0.0 for c in taxonomy.categories])
    return np.append(named, max(engagement.sum() - named.sum(), 0.0))


def transition_rows(n_classes: int, limit: int = 128) -> int:
    """How many of the most engaged classes get a transition row (the rest fall back to popularity)."""
    return min(n_classes, limit)


def pd_codes(values: np.ndarray) -> np.ndarray:
    """Dense 0..n-1 codes of ``values``."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64)
