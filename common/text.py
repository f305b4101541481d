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
from .config import DAY
from .task.examples import EventArrays, ExampleSet, expand_ranges, top_class
from .task.taxonomy import category_token

SEPARATOR = " | "
SUMMARY_SEPARATOR = " || "


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


def interest_summaries(examples: ExampleSet, words: np.ndarray, recent_events: int = 10) -> list[str]:
    """What the history says about interests, in words: ``now X for N days, before Y``.

    Day by day (UTC), the category with the most engagement; ``X`` is the top category of the
    last ``recent_events`` events, ``N`` the number of trailing history days whose top was ``X``
    and ``Y`` the top of the day before that streak. Derived from the history only.
    """
    events = examples.events
    n = len(examples)
    owner, idx = expand_ranges(examples.hist_start, examples.hist_end)
    recent = np.maximum(examples.hist_start, examples.hist_end - recent_events)
    r_owner, r_idx = expand_ranges(recent, examples.hist_end)
    current = top_class(r_owner, events.category[r_idx], events.weight[r_idx], n, prefer_last=True)
    if not len(idx):
        return [""] * n
    day = events.timestamp[idx] // DAY
    span = int(day.max() - day.min()) + 1
    groups, group_of = np.unique(owner.astype(np.int64) * span + (day - day.min()), return_inverse=True)
    day_top = top_class(group_of, events.category[idx], events.weight[idx], len(groups), prefer_last=True)
    bounds = np.searchsorted(groups // span, np.arange(n + 1))
    out = []
    for i in range(n):
        tops = day_top[bounds[i] : bounds[i + 1]].tolist()
        if current[i] < 0:
            out.append("")
            continue
        streak = 0
        while streak < len(tops) and tops[len(tops) - 1 - streak] == current[i]:
            streak += 1
        text = f"now {words[current[i]]} for {streak} day{'s' if streak != 1 else ''}"
        if streak < len(tops):
            text += f", before {words[tops[len(tops) - 1 - streak]]}"
        out.append(text)
    return out


def render_examples(examples: ExampleSet, names: dict[str, str]) -> list[str]:
    """The text of every example: its history, then a summary of its interests (kept by left truncation)."""
    events = examples.events
    words = category_words(events, names)
    summaries = interest_summaries(examples, words)
    return [
        f"{render_history(events.action[s:e], events.category[s:e], words)}{SUMMARY_SEPARATOR}{summary}"
        for s, e, summary in zip(examples.hist_start.tolist(), examples.hist_end.tolist(), summaries)
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
