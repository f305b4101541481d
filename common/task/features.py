"""What counting knows about each category in a user's own history: the scorer's features.

For every example and every class that occurs in its history, a small vector: the share of the
history's engagement on that class at several recency decays, how often each action hit it, how
recently it was last touched, and whether it is the current interest. Classes absent from the
history have no features (their history score is zero). Computed once per example set, pure
NumPy, and stored padded: ``classes[i, j]`` is the j-th history class of example ``i`` (-1 pads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .examples import ExampleSet, expand_ranges

#: Recency decays per event of age; the 0.9 share is the recency-frequency baseline.
DECAYS = (0.5, 0.8, 0.9, 0.97, 1.0)
#: Recency in time: engagement share with exp(-age / τ), τ in hours.
HALF_LIVES_HOURS = (3.0, 24.0, 72.0)
BASELINE_DECAY = 0.9
DAY = 86_400.0
FEATURE_NAMES = (
    *(f"share@{d:g}" for d in DECAYS),  # engagement share of the class, decayed per event of age
    *(f"share@{h:g}h" for h in HALF_LIVES_HOURS),  # engagement share, decayed with time before t
    "views", "favs", "carts", "buys",  # log1p(count) / 4
    "last@0.9",  # 0.9 ** (events since the class was last touched)
    "is_last",  # the latest event is on this class
    "last_day",  # exp(-(t - time of the last touch) / 1 day)
    "is_current",  # the class is the current interest
)
BASELINE_FEATURE = FEATURE_NAMES.index(f"share@{BASELINE_DECAY:g}")


@dataclass(frozen=True)
class HistoryFeatures:
    classes: np.ndarray  # (n, width) int64, -1 = padding
    values: np.ndarray  # (n, width, len(FEATURE_NAMES)) float32

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, indices: np.ndarray) -> "HistoryFeatures":
        return HistoryFeatures(self.classes[indices], self.values[indices])


def history_features(examples: ExampleSet) -> HistoryFeatures:
    """The padded per-(example, history class) features of ``examples``."""
    events = examples.events
    n, n_classes = len(examples), events.n_classes
    owner, idx = expand_ranges(examples.hist_start, examples.hist_end)
    if not len(idx):
        return HistoryFeatures(np.full((n, 1), -1, np.int64), np.zeros((n, 1, len(FEATURE_NAMES)), np.float32))
    age = (examples.hist_end[owner] - 1 - idx).astype(np.float64)
    cls = events.cls[idx].astype(np.int64)
    weight = events.weight[idx]
    keys, pair = np.unique(owner.astype(np.int64) * n_classes + cls, return_inverse=True)
    pair_owner, pair_class = keys // n_classes, keys % n_classes

    columns = []
    for decay in DECAYS:
        decayed = weight * decay**age
        total = np.bincount(owner, weights=decayed, minlength=n)
        columns.append(np.bincount(pair, weights=decayed) / np.maximum(total[pair_owner], 1e-12))
    hours = (examples.t[owner] - events.timestamp[idx]) / 3600.0
    for tau in HALF_LIVES_HOURS:
        decayed = weight * np.exp(-hours / tau)
        total = np.bincount(owner, weights=decayed, minlength=n)
        columns.append(np.bincount(pair, weights=decayed) / np.maximum(total[pair_owner], 1e-12))
    for action in range(4):
        columns.append(np.log1p(np.bincount(pair, weights=(events.action[idx] == action).astype(float))) / 4.0)
    youngest = np.full(len(keys), np.inf)
    np.minimum.at(youngest, pair, age)
    columns.append(BASELINE_DECAY**youngest)
    columns.append((youngest == 0).astype(float))
    latest = np.full(len(keys), -np.inf)
    np.maximum.at(latest, pair, events.timestamp[idx].astype(np.float64))
    columns.append(np.exp(-(examples.t[pair_owner] - latest) / DAY))
    columns.append((pair_class == examples.current[pair_owner]).astype(float))
    values = np.stack(columns, axis=1).astype(np.float32)

    # pad: the j-th distinct history class of each example
    counts = np.bincount(pair_owner, minlength=n)
    width = max(int(counts.max()), 1)
    slot = np.arange(len(keys)) - np.repeat(np.cumsum(counts) - counts, counts)
    classes = np.full((n, width), -1, dtype=np.int64)
    padded = np.zeros((n, width, len(FEATURE_NAMES)), dtype=np.float32)
    classes[pair_owner, slot] = pair_class
    padded[pair_owner, slot] = values
    return HistoryFeatures(classes, padded)


def baseline_scores(features: HistoryFeatures, n_classes: int) -> np.ndarray:
    """The recency-frequency baseline's evidence (up to a per-example scale), from the features."""
    out = np.zeros((len(features), n_classes))
    rows, slots = np.nonzero(features.classes >= 0)
    out[rows, features.classes[rows, slots]] = features.values[rows, slots, BASELINE_FEATURE]
    return out
