"""Platform priors over the taxonomy's classes: popularity, and transitions from a current interest.

Built from platform statistics (privately released, securely summed counts) and held by the
scorer as buffers; they travel with the task, so every party scores with the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Priors:
    """Platform statistics over the taxonomy's classes: popularity and transitions between the top ones.

    ``transition[i, j]`` is P(j | current interest i) for the first ``len(transition)`` classes
    (the most engaged); other current interests fall back to popularity.
    """

    popularity: np.ndarray  # (n_classes,)
    transition: np.ndarray  # (m, n_classes), rows sum to 1
    counts: np.ndarray | None = None  # the summed label flows they came from, (m + 1, n_classes)

    @classmethod
    def from_flows(cls, flows: np.ndarray, alpha: float = 1.0) -> "Priors":
        """From ``common.stats.label_flows``: transition rows, then the label totals as the last row.

        Noised counts are denoised first (``denoise``): true counts are never negative, so the
        negative cells show the noise level, and every cell is shrunk by ``FLOW_THRESHOLD`` of it.
        """
        flows = denoise(np.asarray(flows, dtype=np.float64), threshold=FLOW_THRESHOLD)
        priors = cls.from_counts(flows[-1], flows[:-1], alpha)
        return cls(priors.popularity, priors.transition, flows)

    @classmethod
    def uniform(cls, n_classes: int) -> "Priors":
        return cls(np.full(n_classes, 1.0 / n_classes), np.zeros((0, n_classes)))

    @classmethod
    def from_counts(cls, popularity: np.ndarray, transitions: np.ndarray | None = None,
                    alpha: float = 1.0) -> "Priors":
        """Smoothed priors from (possibly noised) counts: negatives are 0, ``alpha`` pseudo-counts."""
        pop = np.clip(np.asarray(popularity, dtype=np.float64), 0, None) + alpha
        pop = pop / pop.sum()
        if transitions is None:
            return cls(pop, np.zeros((0, len(pop))))
        counts = np.clip(np.asarray(transitions, dtype=np.float64), 0, None) + alpha * pop[None, :]
        return cls(pop, counts / counts.sum(axis=1, keepdims=True))

    def log_matrix(self) -> np.ndarray:
        """log P(j | i) for every current interest i (popularity beyond the transition rows)."""
        n = len(self.popularity)
        out = np.tile(np.log(self.popularity), (n, 1))
        m = len(self.transition)
        if m:
            out[:m] = np.log(np.maximum(self.transition, 1e-12))
        return out

    def to_dict(self) -> dict:
        out = {"popularity": self.popularity.tolist(), "transition": self.transition.tolist()}
        if self.counts is not None:
            out["counts"] = self.counts.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Priors":
        pop = np.asarray(data["popularity"], dtype=np.float64)
        counts = data.get("counts")
        return cls(pop, np.asarray(data["transition"], dtype=np.float64).reshape(-1, len(pop)),
                   None if counts is None or not len(counts) else np.asarray(counts, dtype=np.float64).reshape(-1, len(pop)))


#: A category enters the label space only with noised engagement this many noise levels above zero.
SELECTION_THRESHOLD = 1.0
#: Flow cells are shrunk by this many noise levels. A transition matrix has tens of thousands of
#: cells, mostly empty: at one level, a sixth of the empty ones survive as noise spikes that the
#: scorer learns from; at three, about one in a thousand does (measured on the Taobao sample).
FLOW_THRESHOLD = 3.0


def denoise(counts: np.ndarray, min_negatives: int = 20, threshold: float = 1.0) -> np.ndarray:
    """Soft-thresholded counts: ``max(x - threshold·σ̂, 0)``, σ̂ the noise level the negative cells imply.

    Where true counts are zero, Gaussian noise is negative half the time, and the mean square of
    the negative cells is σ². Counts with too few negative cells to tell are only clipped at 0.
    """
    negative = counts[counts < 0]
    if len(negative) < min_negatives:
        return np.clip(counts, 0, None)
    sigma = float(np.sqrt(np.mean(negative**2)))
    return np.clip(counts - threshold * sigma, 0, None)
