"""Pure parsers from raw timestamp columns to Unix seconds (float, NaN where unparsable)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Plausible Unix-second range: 1990-01-01 .. 2100-01-01. Values outside are unit mistakes.
MIN_SECONDS = 631_152_000
MAX_SECONDS = 4_102_444_800


def _in_range(seconds: pd.Series) -> pd.Series:
    return seconds.where((seconds >= MIN_SECONDS) & (seconds < MAX_SECONDS))


def unix_seconds(raw: pd.Series) -> pd.Series:
    """``1511544070`` -> 1511544070.0."""
    return _in_range(pd.to_numeric(raw, errors="coerce"))


def unix_millis(raw: pd.Series) -> pd.Series:
    """``1433221332117`` -> 1433221332.0 (milliseconds truncated to seconds)."""
    return _in_range(np.floor(pd.to_numeric(raw, errors="coerce") / 1000.0))


def unix_auto(raw: pd.Series) -> pd.Series:
    """Numbers in seconds or milliseconds, told apart by magnitude."""
    numbers = pd.to_numeric(raw, errors="coerce")
    millis = numbers > MAX_SECONDS
    return _in_range(numbers.where(~millis, np.floor(numbers / 1000.0)))


def month_day(raw: pd.Series, year: int) -> pd.Series:
    """Tmall's ``MMDD`` (``1111``, ``0829`` or ``829``) in ``year``, at midnight UTC."""
    text = raw.astype("string").str.strip().str.zfill(4)
    when = pd.to_datetime(f"{year}" + text, format="%Y%m%d", errors="coerce", utc=True)
    return _datetime_seconds(when)


def datetime_text(raw: pd.Series, fmt: str | None = None) -> pd.Series:
    """Date-time strings (``2019-10-01 00:00:00 UTC``, ISO 8601, ...) as UTC seconds."""
    text = raw.astype("string").str.strip()
    if fmt is None:
        text = text.str.replace(r"\s+UTC$", "+00:00", regex=True)
        when = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    else:
        when = pd.to_datetime(text, errors="coerce", utc=True, format=fmt)
    return _datetime_seconds(when)


def any_timestamp(raw: pd.Series) -> pd.Series:
    """Numeric seconds/milliseconds, else date-time text."""
    numbers = pd.to_numeric(raw, errors="coerce")
    if numbers.notna().mean() >= 0.5:
        return unix_auto(raw)
    return datetime_text(raw)


def _datetime_seconds(when: pd.Series) -> pd.Series:
    seconds = pd.Series(np.nan, index=when.index)
    ok = when.notna()
    if ok.any():
        seconds[ok] = (when[ok] - _EPOCH) // pd.Timedelta(seconds=1)
    return _in_range(seconds)


_EPOCH = pd.Timestamp(0, tz="UTC")
