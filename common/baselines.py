"""Reference predictors every learned model is measured against.

Each baseline is fitted on training examples only and returns class probabilities. Where a
baseline's own evidence ties (or is absent), training-label popularity orders the rest, so top-5
metrics stay meaningful.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .metrics import evaluate
from .task.examples import ExampleSet, expand_ranges

#: Weight of the popularity prior that breaks ties inside a baseline's own evidence.
TIE_BREAK = 1e-6


class Baseline(ABC):
    name: str = "baseline"

    def fit(self, train: ExampleSet) -> "Baseline":
        n_classes = train.events.n_classes
        counts = np.bincount(train.label, minlength=n_classes).astype(np.float64) + 1.0
        self.popularity = counts / counts.sum()
        self._fit(train)
        return self

    def _fit(self, train: ExampleSet) -> None:
        """Extra fitting beyond popularity; most baselines need none."""

    @abstractmethod
    def scores(self, examples: ExampleSet) -> np.ndarray:
        """Unnormalised non-negative evidence per class, shape (n, n_classes)."""

    def predict(self, examples: ExampleSet) -> np.ndarray:
        evidence = self.scores(examples) + TIE_BREAK * self.popularity[None, :]
        return evidence / evidence.sum(axis=1, keepdims=True)


class Persistence(Baseline):
    """The user keeps their current interest."""

    name = "persistence"

    def scores(self, examples: ExampleSet) -> np.ndarray:
        out = np.zeros((len(examples), len(self.popularity)))
        out[np.arange(len(examples)), examples.current] = 1.0
        return out


class Popularity(Baseline):
    """The most frequent training labels, for everyone."""

    name = "popularity"

    def scores(self, examples: ExampleSet) -> np.ndarray:
        return np.tile(self.popularity, (len(examples), 1))


class Markov(Baseline):
    """First-order Markov chain over interests: P(next interest | current interest).

    Transitions are counted from training examples (current interest -> label) and smoothed
    towards popularity with ``alpha`` pseudo-counts.
    """

    name = "markov"

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def _fit(self, train: ExampleSet) -> None:
        n = len(self.popularity)
        counts = np.zeros((n, n))
        np.add.at(counts, (train.current, train.label), 1.0)
        counts += self.alpha * self.popularity[None, :]
        totals = counts.sum(axis=1, keepdims=True)
        # an interest never seen in training falls back to popularity
        self.transitions = np.where(totals > 0, counts / np.maximum(totals, 1e-300), self.popularity[None, :])

    def scores(self, examples: ExampleSet) -> np.ndarray:
        return self.transitions[examples.current]


class RecencyFrequency(Baseline):
    """The user's own history: engagement weight with exponential decay per event of age."""

    name = "recency-frequency"

    def __init__(self, decay: float = 0.9):
        self.decay = decay

    def scores(self, examples: ExampleSet) -> np.ndarray:
        events = examples.events
        n, n_classes = len(examples), len(self.popularity)
        owner, idx = expand_ranges(examples.hist_start, examples.hist_end)
        age = examples.hist_end[owner] - 1 - idx
        weight = events.weight[idx] * self.decay**age
        flat = np.bincount(owner * n_classes + events.cls[idx], weights=weight, minlength=n * n_classes)
        return flat.reshape(n, n_classes)


def all_baselines() -> list[Baseline]:
    return [Persistence(), Popularity(), Markov(), RecencyFrequency()]


def run_baselines(train: ExampleSet, test: ExampleSet) -> dict[str, dict[str, float]]:
    """Fit each baseline on ``train`` and evaluate it on ``test``."""
    results = {}
    for baseline in all_baselines():
        probs = baseline.fit(train).predict(test)
        results[baseline.name] = evaluate(probs, test.label, test.current, other=test.events.n_classes - 1)
    return results
