"""The time window a log really covers: its documented one, a robust span, or one given by hand.

Real logs hold a few events far outside their period (the Taobao UserBehavior file has rows in
September 2017 beside its 2017-11-25 .. 12-03 week). A split from the earliest to the latest
event would then put everything in one period. Loaders drop such rows and report them.

The robust span takes the 0.1%–99.9% quantiles of the timestamps as a core, then widens it day
by day while the next day with events lies within ``GAP_DAYS`` of the span: a continuous log
keeps everything, while isolated days far out are cut. Isolated runs at either end that hold
under 1% of the events are set aside first, so a file with more outliers than the quantile
tail (a clock reset on many devices) still loses only them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY = 86_400
GAP_DAYS = 3
TAIL = 0.001
SMALL_RUN = 0.01  # an isolated run of days at either end with less than this share of events is cut


@dataclass(frozen=True)
class TimeWindow:
    """Events with ``start <= timestamp < end`` are in the window."""

    start: int
    end: int
    how: str  # "documented", "robust" or "given"
    utc_offset: int = 0  # the source's time zone, for showing dates

    def describe(self) -> str:
        def day(seconds: int) -> str:
            return pd.Timestamp(seconds + self.utc_offset, unit="s").strftime("%Y-%m-%d %H:%M")

        zone = "UTC" if not self.utc_offset else f"UTC{self.utc_offset / 3600:+g}"
        return f"{day(self.start)} .. {day(self.end)} ({zone}, {self.how})"

    def inside(self, timestamps: np.ndarray) -> np.ndarray:
        return (timestamps >= self.start) & (timestamps < self.end)


def robust_window(timestamps: np.ndarray, gap_days: int = GAP_DAYS, tail: float = TAIL,
                  utc_offset: int = 0) -> TimeWindow:
    """The quantile core widened over days that lie within ``gap_days`` of it (see module doc).

    Days are the source's local days (``utc_offset`` seconds east of UTC). Before the quantiles,
    runs of days cut off by a gap of more than ``gap_days`` at either end that hold less than
    ``SMALL_RUN`` of the events are set aside, so outliers above the quantile tail still go.
    """
    ts = np.asarray(timestamps, dtype=np.int64) + utc_offset
    days, counts = np.unique(ts // DAY, return_counts=True)
    runs = np.split(np.arange(len(days)), np.nonzero(np.diff(days) > gap_days)[0] + 1)
    while len(runs) > 1 and counts[runs[0]].sum() < SMALL_RUN * len(ts):
        runs.pop(0)
    while len(runs) > 1 and counts[runs[-1]].sum() < SMALL_RUN * len(ts):
        runs.pop()
    kept = days[np.concatenate(runs)]
    ts = ts[(ts // DAY >= kept[0]) & (ts // DAY <= kept[-1])]
    days = np.unique(ts // DAY)
    low, high = np.quantile(ts, [tail, 1 - tail]) // DAY
    first = last = None
    for i, d in enumerate(days):  # the core: days between the quantiles
        if low <= d <= high:
            first = i if first is None else first
            last = i
    if first is None:
        first = last = int(np.searchsorted(days, low))
    while first > 0 and days[first] - days[first - 1] <= gap_days:
        first -= 1
    while last < len(days) - 1 and days[last + 1] - days[last] <= gap_days:
        last += 1
    return TimeWindow(int(days[first] * DAY) - utc_offset, int((days[last] + 1) * DAY) - utc_offset, "robust",
                      utc_offset)


def choose_window(timestamps: np.ndarray, documented: tuple[int, int] | None = None, start: int | None = None,
                  end: int | None = None, utc_offset: int = 0) -> TimeWindow | None:
    """The window to keep: ``start``/``end`` by hand, else the format's documented one, else robust.

    The documented window applies when most events fall inside it (the real dataset); a log that
    only shares the layout (another period) gets the robust span.
    """
    if start is not None or end is not None:
        return TimeWindow(int(start) if start is not None else -(2**62), int(end) if end is not None else 2**62,
                          "given", utc_offset)
    if not len(timestamps):
        return None
    if documented is not None:
        window = TimeWindow(documented[0], documented[1], "documented", utc_offset)
        if window.inside(np.asarray(timestamps)).mean() >= 0.5:
            return window
    return robust_window(timestamps, utc_offset=utc_offset)


def parse_time(text: str, flag: str = "--start") -> int:
    """A date or date-time (``2017-11-25``, ``2017-11-25T08:00+08:00``) as Unix seconds (UTC if no zone)."""
    from .schema import DataError

    try:
        when = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise DataError(f"{flag} {text!r}: not a date; use e.g. 2017-11-25 or 2017-11-25T00:00+08:00") from None
    if when.tzinfo is None:
        when = when.tz_localize("UTC")
    return int(when.timestamp())
