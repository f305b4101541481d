"""Ranking metrics for next-interest prediction, on all and on migrating examples.

Scores are an ``(n, n_classes)`` array (probabilities for ``migration_auroc``). Ties in a row
are broken towards the lower class index, so every metric is deterministic. A NaN score ranks
last: a model that diverges scores nothing.

``other`` (the class of everything outside the taxonomy) is never a hit: it is never ranked, and
the headline metrics are over examples with a named label; ``other_share`` says how many were not.
"""

from __future__ import annotations

import numpy as np

K = 5
METRIC_NAMES: tuple[str, ...] = (
    "acc@1", "hr@5", "ndcg@5", "mig_acc@1", "mig_hr@5", "mig_ndcg@5", "mig_auroc", "other_share",
)


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of each label in its row (ties: lower class index ranks first; NaN ranks last)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(np.float64).max)
    labels = np.asarray(labels)
    own = scores[np.arange(len(labels)), labels][:, None]
    classes = np.arange(scores.shape[1])[None, :]
    ahead = (scores > own) | ((scores == own) & (classes < labels[:, None]))
    ranks = 1 + ahead.sum(axis=1)
    return np.where(np.isneginf(own[:, 0]), scores.shape[1], ranks)  # an unscored label is last


def accuracy_at_1(ranks: np.ndarray) -> float:
    return float(np.mean(ranks == 1)) if len(ranks) else float("nan")


def hit_rate_at_k(ranks: np.ndarray, k: int = K) -> float:
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def ndcg_at_k(ranks: np.ndarray, k: int = K) -> float:
    """With one relevant class per example: 1/log2(rank + 1) within the top k, else 0."""
    if not len(ranks):
        return float("nan")
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(gains.mean())


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # average rank over each run of equal scores
    boundaries = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1, len(scores)]
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def migration_scores(probs: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Score of migrating = 1 - p(current interest)."""
    return 1.0 - np.asarray(probs)[np.arange(len(current)), current]


def evaluate(probs: np.ndarray, labels: np.ndarray, current: np.ndarray, other: int | None = None) -> dict[str, float]:
    """All metrics of ``METRIC_NAMES`` plus counts, over examples whose label is not ``other``.

    ``other`` is never ranked (its column counts as -inf). ``n`` and ``n_migrating`` count the
    examples scored; ``other_share`` is the share of all examples left out for an ``other`` label.
    """
    probs = np.array(probs, dtype=np.float64)
    labels = np.asarray(labels)
    current = np.asarray(current)
    total = len(labels)
    other_share = 0.0
    if other is not None:
        probs[:, other] = -np.inf
        named = labels != other
        other_share = float(1 - named.mean()) if total else 0.0
        probs, labels, current = probs[named], labels[named], current[named]
    ranks = label_ranks(probs, labels)
    mig = labels != current
    return {
        "acc@1": accuracy_at_1(ranks),
        "hr@5": hit_rate_at_k(ranks),
        "ndcg@5": ndcg_at_k(ranks),
        "mig_acc@1": accuracy_at_1(ranks[mig]),
        "mig_hr@5": hit_rate_at_k(ranks[mig]),
        "mig_ndcg@5": ndcg_at_k(ranks[mig]),
        "mig_auroc": auroc(np.nan_to_num(migration_scores(_finite(probs), current), nan=0.0), mig),
        "n": float(len(labels)),
        "n_migrating": float(mig.sum()),
        "other_share": other_share,
    }


def _finite(probs: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(probs), probs, 0.0)
