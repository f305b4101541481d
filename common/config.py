"""Configuration dataclasses, validated at construction so bad values fail at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DAY = 86_400


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class TaskConfig:
    """How examples are cut from event streams (DESIGN.md, "The task").

    An example is one user at a prediction time ``t`` on a grid of ``stride_seconds``. Its
    history is the last ``history_events`` events before ``t``; its label is the category with the
    highest engagement in ``[t, t + window_seconds)``; its current interest is the top category of
    the last ``recent_events`` history events. The grid is aligned to midnight at ``utc_offset``.
    """

    history_events: int = 200
    recent_events: int = 10
    window_seconds: int = DAY
    stride_seconds: int = DAY
    min_history: int = 3
    min_target: int = 1
    top_k: int = 0  # 0: the smallest K covering ``coverage`` of training engagement, at most ``max_top_k``
    coverage: float = 0.9
    max_top_k: int = 2000
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    utc_offset: int = 0  # the prediction grid's time zone, seconds east of UTC (Taobao: 8 h)

    def __post_init__(self) -> None:
        _require(self.history_events >= 1, "history_events must be >= 1")
        _require(1 <= self.recent_events, "recent_events must be >= 1")
        _require(self.window_seconds > 0, "window_seconds must be > 0")
        _require(self.stride_seconds > 0, "stride_seconds must be > 0")
        _require(1 <= self.min_history <= self.history_events, "min_history must be in [1, history_events]")
        _require(self.min_target >= 1, "min_target must be >= 1")
        _require(self.top_k >= 0, "top_k must be >= 0 (0: by coverage)")
        _require(0 < self.coverage <= 1, "coverage must be in (0, 1]")
        _require(self.max_top_k >= 1, "max_top_k must be >= 1")
        _require(0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)")
        _require(0 < self.test_fraction < 1, "test_fraction must be in (0, 1)")
        _require(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be < 1")
        _require(-14 * 3600 <= self.utc_offset <= 14 * 3600, "utc_offset must be within ±14 hours")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaskConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        _require(not unknown, f"unknown task setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)
