"""English rendering of behaviour histories for a BERT-style encoder.

A history reads oldest to newest, one segment per run of identical (action, category) events::

    view running shoes x3 | cart sports watch | buy protein powder

Categories use their English names where known, else a stable token per category id
(``cat2520377``) so ID-only data still renders the same way in every shop. Encoders should
truncate from the left so the most recent events survive.
"""

from __future__ import annotations

import numpy as np

from .data.schema import ACTION_WORDS
from .task.examples import EventArrays, ExampleSet
from .task.taxonomy import category_token

SEPARATOR = " | "


def category_words(events: EventArrays, names: dict[str, str]) -> np.ndarray:
    """The English words for every category code of ``events``."""
    return np.array([names.get(c) or category_token(c) for c in events.category_ids], dtype=object)


def render_segment(action: int, words: str, repeats: int) -> str:
    text = f"{ACTION_WORDS[action]} {words}"
    return f"{text} x{repeats}" if repeats > 1 else text


def render_history(actions: np.ndarray, categories: np.ndarray, words: np.ndarray) -> str:
    """One history (arrays in time order) as text, merging consecutive repeats."""
    segments: list[str] = []
    prev: tuple[int, int] | None = None
    repeats = 0
    for action, category in zip(actions.tolist(), categories.tolist()):
        if (action, category) == prev:
            repeats += 1
            continue
        if prev is not None:
            segments.append(render_segment(prev[0], words[prev[1]], repeats))
        prev, repeats = (action, category), 1
    if prev is not None:
        segments.append(render_segment(prev[0], words[prev[1]], repeats))
    return SEPARATOR.join(segments)


def render_examples(examples: ExampleSet, names: dict[str, str]) -> list[str]:
    """The history text of every example."""
    events = examples.events
    words = category_words(events, names)
    return [
        render_history(events.action[s:e], events.category[s:e], words)
        for s, e in zip(examples.hist_start.tolist(), examples.hist_end.tolist())
    ]
