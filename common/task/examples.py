"""Prediction examples: one user at one prediction time ``t`` (DESIGN.md, "The task").

* history: the user's last ``history_events`` events before ``t``;
* label: the class with the highest engagement (view 1, fav 2, cart 3, buy 4) in
  ``[t, t + window)``; ties go to the class engaged first in the window;
* current interest: the top class of the last ``recent_events`` history events; ties go to the
  class engaged most recently;
* migrating: label != current interest.

Examples do not copy histories: they hold index ranges into one ``EventArrays`` (the events
sorted by user and time), so a million events make cheap examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TaskConfig
from ..data.schema import ACTION_WEIGHTS, EventTable
from .taxonomy import Taxonomy


@dataclass(frozen=True)
class EventArrays:
    """Events sorted by (user, timestamp), as flat arrays; ``user_start[u]`` indexes user ``u``."""

    user: np.ndarray  # int32 user code
    timestamp: np.ndarray  # int64 seconds
    action: np.ndarray  # int8 Action
    cls: np.ndarray  # int32 taxonomy class
    category: np.ndarray  # int32 code into category_ids
    item: np.ndarray  # int32 code into item_ids
    user_start: np.ndarray  # int64, len = n_users + 1
    user_ids: np.ndarray  # str, by user code
    category_ids: np.ndarray  # str, by category code
    item_ids: np.ndarray  # str, by item code
    n_classes: int

    def __len__(self) -> int:
        return len(self.timestamp)

    @property
    def weight(self) -> np.ndarray:
        return ACTION_WEIGHTS[self.action]

    @classmethod
    def from_table(cls, table: EventTable, taxonomy: Taxonomy) -> "EventArrays":
        frame = table.frame
        user = frame["user_id"].cat.codes.to_numpy().astype(np.int32)
        ts = frame["timestamp"].to_numpy()
        order = np.lexsort((np.arange(len(ts)), ts, user))  # stable on ties
        user = user[order]
        n_users = len(frame["user_id"].cat.categories)
        starts = np.searchsorted(user, np.arange(n_users + 1), side="left").astype(np.int64)
        return cls(
            user=user,
            timestamp=ts[order],
            action=frame["action"].to_numpy()[order],
            cls=taxonomy.classes_of(frame["category"])[order],
            category=frame["category"].cat.codes.to_numpy().astype(np.int32)[order],
            item=frame["item_id"].cat.codes.to_numpy().astype(np.int32)[order],
            user_start=starts,
            user_ids=np.asarray(frame["user_id"].cat.categories.astype(str)),
            category_ids=np.asarray(frame["category"].cat.categories.astype(str)),
            item_ids=np.asarray(frame["item_id"].cat.categories.astype(str)),
            n_classes=taxonomy.n_classes,
        )


@dataclass(frozen=True)
class ExampleSet:
    """Examples as parallel arrays; histories are ``events[hist_start:hist_end]``."""

    events: EventArrays
    user: np.ndarray
    t: np.ndarray
    hist_start: np.ndarray
    hist_end: np.ndarray
    target_end: np.ndarray
    label: np.ndarray
    current: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @property
    def migrating(self) -> np.ndarray:
        return self.label != self.current

    def subset(self, mask: np.ndarray) -> "ExampleSet":
        """The examples where ``mask`` (bool or index array) selects."""
        return ExampleSet(
            events=self.events,
            user=self.user[mask],
            t=self.t[mask],
            hist_start=self.hist_start[mask],
            hist_end=self.hist_end[mask],
            target_end=self.target_end[mask],
            label=self.label[mask],
            current=self.current[mask],
        )

    def history_classes(self, i: int) -> np.ndarray:
        return self.events.cls[self.hist_start[i] : self.hist_end[i]]


def expand_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ranges ``[starts[i], ends[i])``: returns (owner i, index) for every element."""
    lengths = np.maximum(ends - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, np.repeat(starts, lengths) + offsets


def top_class(
    owner: np.ndarray,
    cls: np.ndarray,
    weight: np.ndarray,
    n_owners: int,
    prefer_last: bool,
) -> np.ndarray:
    """For each owner, the class with the largest summed weight (-1 if it has no elements).

    Elements must be in time order within an owner. Ties go to the class whose first element is
    earliest (``prefer_last=False``) or whose last element is latest (``prefer_last=True``).
    """
    result = np.full(n_owners, -1, dtype=np.int64)
    if not len(owner):
        return result
    n_cls = int(cls.max()) + 1
    key = owner.astype(np.int64) * n_cls + cls
    position = np.arange(len(key))
    uniq, inverse = np.unique(key, return_inverse=True)
    sums = np.bincount(inverse, weights=weight)
    if prefer_last:
        last = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(last, inverse, position)
        tiebreak = -last
    else:
        first = np.full(len(uniq), len(key), dtype=np.int64)
        np.minimum.at(first, inverse, position)
        tiebreak = first
    owners = uniq // n_cls
    order = np.lexsort((tiebreak, -sums, owners))
    best = order[np.r_[True, owners[order][1:] != owners[order][:-1]]]
    result[owners[best]] = uniq[best] % n_cls
    return result


def _first_at_or_after(events: EventArrays, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Per (user, time): index of the user's first event at or after the time (their end if none)."""
    if not len(events):
        return np.zeros(len(users), dtype=np.int64)
    base = int(min(events.timestamp.min(), times.min(initial=0)))
    span = int(max(events.timestamp.max(), times.max(initial=0))) - base + 2
    key = events.user.astype(np.int64) * span + (events.timestamp - base)  # one sort key: (user, time)
    found = np.searchsorted(key, users.astype(np.int64) * span + (times - base), side="left")
    return np.clip(found, events.user_start[users], events.user_start[users + 1])


@dataclass(frozen=True)
class TimeRange:
    """Prediction times ``t`` with ``start <= t`` and ``t + window <= end``."""

    start: int
    end: int


def prediction_grid(events: EventArrays, config: TaskConfig, span: TimeRange) -> np.ndarray:
    """Grid times (multiples of the stride from midnight at the configured UTC offset) inside ``span``."""
    if not len(events):
        return np.array([], dtype=np.int64)
    stride, offset = config.stride_seconds, config.utc_offset
    first = max(span.start, int(events.timestamp.min()) + 1)
    first = -(-(first + offset) // stride) * stride - offset
    last = span.end - config.window_seconds  # the whole label window lies inside the span
    return np.arange(first, last + 1, stride, dtype=np.int64)


def build_examples(events: EventArrays, config: TaskConfig, span: TimeRange) -> ExampleSet:
    """All examples with prediction times on the grid inside ``span`` that meet the minimums."""
    grid = prediction_grid(events, config, span)
    n_users = len(events.user_start) - 1
    users = np.repeat(np.arange(n_users), len(grid))
    times = np.tile(grid, n_users)
    begin = events.user_start[users]
    stop = events.user_start[users + 1]
    hist_end = _first_at_or_after(events, users, times)
    target_end = _first_at_or_after(events, users, times + config.window_seconds)
    ok = (hist_end - begin >= config.min_history) & (target_end - hist_end >= config.min_target)
    users, times, begin, hist_end, target_end = users[ok], times[ok], begin[ok], hist_end[ok], target_end[ok]
    hist_start = np.maximum(begin, hist_end - config.history_events)

    weight = events.weight
    owner, idx = expand_ranges(hist_end, target_end)
    label = top_class(owner, events.cls[idx], weight[idx], len(users), prefer_last=False)
    recent_start = np.maximum(hist_start, hist_end - config.recent_events)
    owner, idx = expand_ranges(recent_start, hist_end)
    current = top_class(owner, events.cls[idx], weight[idx], len(users), prefer_last=True)
    return ExampleSet(
        events=events,
        user=users.astype(np.int32),
        t=times,
        hist_start=hist_start,
        hist_end=hist_end,
        target_end=target_end,
        label=label,
        current=current,
    )


def latest_examples(events: EventArrays, config: TaskConfig, at: int) -> ExampleSet:
    """One example per user at time ``at`` (no label: the future is what is asked for).

    Users with fewer than ``min_history`` events before ``at`` are left out. ``label`` is -1.
    """
    all_users = np.arange(len(events.user_start) - 1)
    begin = events.user_start[:-1]
    before = _first_at_or_after(events, all_users, np.full(len(all_users), at, dtype=np.int64))
    ok = before - begin >= config.min_history
    users = np.flatnonzero(ok)
    hist_end = before[ok]
    hist_start = np.maximum(begin[ok], hist_end - config.history_events)
    recent_start = np.maximum(hist_start, hist_end - config.recent_events)
    owner, idx = expand_ranges(recent_start, hist_end)
    current = top_class(owner, events.cls[idx], events.weight[idx], len(users), prefer_last=True)
    return ExampleSet(
        events=events,
        user=users.astype(np.int32),
        t=np.full(len(users), at, dtype=np.int64),
        hist_start=hist_start,
        hist_end=hist_end,
        target_end=hist_end,
        label=np.full(len(users), -1, dtype=np.int64),
        current=current,
    )
