"""Temporal train/validation/test split: train before ``T_val``, test from ``T_test`` on.

A training example's whole target window ends at or before ``T_val``, so no target event of a
training example lies at or after the split time; validation windows end by ``T_test``.
Histories may reach back across a split: the past is known at prediction time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import TaskConfig
from ..data.schema import DataError
from .examples import TimeRange


@dataclass(frozen=True)
class TemporalSplit:
    start: int
    val_start: int
    test_start: int
    end: int

    @property
    def train(self) -> TimeRange:
        return TimeRange(self.start, self.val_start)

    @property
    def val(self) -> TimeRange:
        return TimeRange(self.val_start, self.test_start)

    @property
    def test(self) -> TimeRange:
        return TimeRange(self.test_start, self.end)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def temporal_split(first_ts: int, last_ts: int, config: TaskConfig, source: str = "data") -> TemporalSplit:
    """Stride-aligned cut points at the configured fractions of the time span.

    The split ends just after the last event, so no label window runs past the end of the data.
    """
    stride, offset = config.stride_seconds, config.utc_offset
    start = ((first_ts + offset) // stride) * stride - offset
    aligned_end = -(-(last_ts + 1 + offset) // stride) * stride - offset  # the stride holding the last event
    strides = (aligned_end - start) // stride
    test_strides = max(1, round(config.test_fraction * strides))
    val_strides = round(config.val_fraction * strides)
    train_strides = strides - test_strides - val_strides
    needed = config.window_seconds / stride
    if train_strides < 1 + needed:
        raise DataError(
            f"{source}: events span {strides} strides of {stride} s; a temporal split needs more "
            f"history before the validation and test periods (or lower --test-fraction)"
        )
    test_start = start + (strides - test_strides) * stride
    val_start = test_start - val_strides * stride
    return TemporalSplit(start=start, val_start=val_start, test_start=test_start, end=last_ts + 1)
