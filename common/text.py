"""English rendering of behaviour histories for a BERT-style encoder.

A history reads oldest to newest, one segment per run of consecutive events on the same
category, led by the strongest action of the run and followed by its length::

    view running shoes x3 | cart sports watch x2 | buy protein powder

Categories use their English names where known, else a stable token per category id
(``cat2520377``) so ID-only data still renders the same way in every shop. Encoders should
truncate from the left so the most recent events survive.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """One history (arrays in time order) as text, one segment per same-category run."""
    segments: list[str] = []
    run_category, run_action, run_length = -1, 0, 0
    for action, category in zip(actions.tolist(), categories.tolist()):
        if category == run_category:
            run_action, run_length = max(run_action, action), run_length + 1
            continue
        if run_length:
            segments.append(render_segment(run_action, words[run_category], run_length))
        run_category, run_action, run_length = category, action, 1
    if run_length:
        segments.append(render_segment(run_action, words[run_category], run_length))
    return SEPARATOR.join(segments)


def render_examples(examples: ExampleSet, names: dict[str, str]) -> list[str]:
    """The history text of every example."""
    events = examples.events
    words = category_words(events, names)
    return [
        render_history(events.action[s:e], events.category[s:e], words)
        for s, e in zip(examples.hist_start.tolist(), examples.hist_end.tolist())
    ]


@dataclass(frozen=True)
class EncodedTexts:
    """Token ids right-padded to the longest text (at most ``max_length``), plus true lengths."""

    input_ids: np.ndarray  # (n, width) int64
    lengths: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.lengths)


def encode_texts(texts: list[str], tokenizer, max_length: int = 128) -> EncodedTexts:
    """Tokenize (left truncation keeps the newest events) into a padded id matrix."""
    if not texts:
        return EncodedTexts(np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64))
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    matrix = np.full((len(ids), int(lengths.max())), tokenizer.pad_token_id or 0, dtype=np.int64)
    for row, seq in enumerate(ids):
        matrix[row, : len(seq)] = seq
    return EncodedTexts(matrix, lengths)
