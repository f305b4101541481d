"""The canonical event schema every loader produces.

One row is one user action on one item::

    user_id   str (categorical)   who acted
    item_id   str (categorical)   on what
    category  str (categorical)   the item's category id, as the source spells it
    action    int8                0 view, 1 fav, 2 cart, 3 buy  (see ``Action``)
    timestamp int64               Unix seconds, UTC
    merchant_id str (categorical) optional: the shop that holds the row

English names live beside the table, not in it (``EventTable.category_names`` and
``EventTable.item_titles``): they are catalogue data, one entry per category or item.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


class Action(enum.IntEnum):
    """User actions, ordered by strength of intent."""

    VIEW = 0
    FAV = 1
    CART = 2
    BUY = 3

    @property
    def word(self) -> str:
        return self.name.lower()


ACTION_WORDS: tuple[str, ...] = tuple(a.word for a in Action)
#: Engagement weight of each action (DESIGN.md: view 1, fav 2, cart 3, buy 4), indexed by Action.
ACTION_WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0])

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category", "action", "timestamp")
OPTIONAL_COLUMNS: tuple[str, ...] = ("merchant_id",)
CATEGORICAL_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category", "merchant_id")


class DataError(Exception):
    """Input data that cannot be used; the message names the file and what to do."""


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, per reason, with the first line numbers."""

    source: str
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_lines: dict[str, list[int]] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the time window kept, [start, end) Unix seconds, and how it was chosen: "documented" (the
    #: dataset's own documentation), "given" (by hand, or a dataset's manifest) or "robust" (read off the
    #: data: not public, so not for a private run's calendar)
    window: tuple[int, int, str] | None = None

    MAX_LINES = 5

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, line_numbers: np.ndarray | list[int]) -> None:
        """Count rows skipped for ``reason``; remember the first few line numbers."""
        lines = list(np.asarray(line_numbers, dtype=np.int64)[: self.MAX_LINES])
        if not len(line_numbers):
            return
        self.skipped[reason] = self.skipped.get(reason, 0) + len(line_numbers)
        kept = self.first_lines.setdefault(reason, [])
        kept.extend(int(x) for x in lines[: self.MAX_LINES - len(kept)])

    def ignore(self, reason: str, count: int) -> None:
        """Count valid rows deliberately left out (e.g. REES46 ``remove_from_cart``)."""
        if count:
            self.ignored[reason] = self.ignored.get(reason, 0) + int(count)

    def merge(self, other: "LoadReport") -> None:
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            kept = self.first_lines.setdefault(reason, [])
            kept.extend(other.first_lines.get(reason, [])[: self.MAX_LINES - len(kept)])
        for reason, n in other.ignored.items():
            self.ignored[reason] = self.ignored.get(reason, 0) + n
        self.notes.extend(other.notes)
        if self.window is None or self.window == other.window:
            self.window = other.window
        elif other.window is not None:  # parts kept different windows: the union, public only if both are
            public = self.window[2] != "robust" and other.window[2] != "robust"
            self.window = (min(self.window[0], other.window[0]), max(self.window[1], other.window[1]),
                           "given" if public else "robust")

    def summary(self) -> str:
        lines = [f"{self.source} ({self.format}): kept {self.rows_kept:,} of {self.rows_read:,} rows"]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            where = ", ".join(str(x) for x in self.first_lines.get(reason, []))
            lines.append(f"  skipped {n:,} rows: {reason} (first at line {where})")
        for reason, n in sorted(self.ignored.items()):
            lines.append(f"  ignored {n:,} rows: {reason}")
        lines.extend(f"  note: {note}" for note in dict.fromkeys(self.notes))
        return "\n".join(lines)


@dataclass
class EventTable:
    """Canonical events plus the catalogue names that came with them."""

    frame: pd.DataFrame
    report: LoadReport
    category_names: dict[str, str] = field(default_factory=dict)
    item_titles: dict[str, str] = field(default_factory=dict)
    #: the platform's catalogue that came with the data (every category it sells in, used or not):
    #: public, unlike the categories the events happen to hold
    public_categories: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def from_records(cls, records: "pd.DataFrame | list[dict]", source: str = "records") -> "EventTable":
        """A table from already-canonical rows (ids as any scalar, action as Action or int)."""
        raw = pd.DataFrame(records)
        frame = pd.DataFrame(
            {
                "user_id": pd.Categorical(raw["user_id"].astype(str)),
                "item_id": pd.Categorical(raw["item_id"].astype(str)),
                "category": pd.Categorical(raw["category"].astype(str)),
                "action": raw["action"].astype(np.int8).to_numpy(),
                "timestamp": raw["timestamp"].astype(np.int64).to_numpy(),
            }
        )
        if "merchant_id" in raw:
            frame["merchant_id"] = pd.Categorical(raw["merchant_id"].astype(str))
        report = LoadReport(source=source, format="canonical", rows_read=len(frame), rows_kept=len(frame))
        return cls(frame, report)

    def without_users(self, user_ids) -> "EventTable":
        """This table less every event of ``user_ids``: a neighbouring dataset, for removal tests and audits."""
        drop = set(map(str, user_ids))
        keep = ~self.frame["user_id"].astype(str).isin(drop).to_numpy()
        return EventTable(self.frame[keep].reset_index(drop=True), self.report, self.category_names,
                          self.item_titles, self.public_categories)

    @property
    def has_merchants(self) -> bool:
        return "merchant_id" in self.frame.columns and self.frame["merchant_id"].notna().any()

    def part(self, keep: np.ndarray, name: str) -> "EventTable":
        """The rows ``keep`` as a table of their own, named ``<source>#<name>`` (one shop of a log)."""
        rows = self.frame[keep].reset_index(drop=True)
        report = LoadReport(source=f"{self.report.source}#{name}", format=self.report.format,
                            rows_read=len(rows), rows_kept=len(rows), window=self.report.window)
        return EventTable(rows, report, self.category_names, self.item_titles, self.public_categories)

    def of_merchant(self, shop: str) -> "EventTable":
        """The events of one shop (its ``merchant_id``); empty when the log has none of that shop."""
        if not self.has_merchants:
            raise DataError(f"{self.report.source}: has no shop id (merchant_id) to select shop {shop!r} by")
        return self.part(self.frame["merchant_id"].astype(str).to_numpy() == str(shop), str(shop))


def empty_frame() -> pd.DataFrame:
    """A zero-row frame with the canonical columns and dtypes."""
    return pd.DataFrame(
        {
            "user_id": pd.Categorical([]),
            "item_id": pd.Categorical([]),
            "category": pd.Categorical([]),
            "action": np.array([], dtype=np.int8),
            "timestamp": np.array([], dtype=np.int64),
        }
    )
