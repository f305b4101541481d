"""The platform taxonomy: the label space shared by every shop (top-K categories + ``other``).

Category lists are catalogue data, not behaviour data, so the taxonomy ships in the run config.
It is built once from data (the top-K categories by engagement before a cut-off time) or read
from a JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_write_text
from ..data.schema import ACTION_WEIGHTS, DataError, EventTable

OTHER = "other"


def category_token(category_id: str) -> str:
    """A stable English-ish token for a category that has no name (ID-only data)."""
    return f"cat{category_id}"


@dataclass(frozen=True)
class Taxonomy:
    """``categories[i]`` is class ``i``; class ``len(categories)`` is ``other``."""

    categories: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.names):
            raise ValueError("taxonomy needs one name per category")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("taxonomy categories must be unique")

    @property
    def n_classes(self) -> int:
        return len(self.categories) + 1

    @property
    def other(self) -> int:
        return len(self.categories)

    @property
    def class_names(self) -> tuple[str, ...]:
        return (*self.names, OTHER)

    def classes_of(self, categories: pd.Categorical | pd.Series | np.ndarray) -> np.ndarray:
        """Class index of each category id (``other`` for ids outside the taxonomy)."""
        cat = pd.Categorical(categories)
        lookup = {c: i for i, c in enumerate(self.categories)}
        per_code = np.array([lookup.get(str(c), self.other) for c in cat.categories], dtype=np.int32)
        codes = np.asarray(cat.codes)
        classes = np.full(len(codes), self.other, dtype=np.int32)
        known = codes >= 0
        classes[known] = per_code[codes[known]]
        return classes

    def coverage(self, table: EventTable) -> float:
        """Share of engagement weight in ``table`` that falls on named (non-``other``) classes."""
        frame = table.frame
        if not len(frame):
            return 0.0
        weights = ACTION_WEIGHTS[frame["action"].to_numpy()]
        named = self.classes_of(frame["category"]) != self.other
        return float(weights[named].sum() / weights.sum())

    def to_dict(self) -> dict:
        return {"categories": list(self.categories), "names": list(self.names), "other": OTHER}

    @classmethod
    def from_dict(cls, data: dict, source: str = "taxonomy") -> "Taxonomy":
        try:
            return cls(tuple(str(c) for c in data["categories"]), tuple(str(n) for n in data["names"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{source}: not a taxonomy ({exc}); it needs 'categories' and 'names' lists of equal length"
            ) from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Taxonomy":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no such taxonomy file") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))


def taxonomy_size(weights: np.ndarray, top_k: int = 0, coverage: float = 0.9, cap: int = 2000) -> int:
    """``top_k`` if set, else the smallest K whose top categories hold ``coverage`` of ``weights`` (≤ ``cap``)."""
    if top_k > 0:
        return int(top_k)
    w = np.sort(np.clip(np.asarray(weights, dtype=np.float64), 0, None))[::-1]
    if not len(w) or w.sum() <= 0:
        return min(len(w), cap) or 1
    k = int(np.searchsorted(np.cumsum(w) / w.sum(), coverage - 1e-12)) + 1
    return max(1, min(k, cap, len(w)))


def build_taxonomy(table: EventTable, top_k: int = 0, before: int | None = None, coverage: float = 0.9,
                   cap: int = 2000) -> Taxonomy:
    """The top categories by engagement weight in events before ``before`` (all if None).

    ``top_k`` of them, or (``top_k=0``) as many as cover ``coverage`` of the engagement, at most
    ``cap``. Ties are broken by category id so the result is deterministic.
    """
    frame = table.frame
    if before is not None:
        frame = frame[frame["timestamp"].to_numpy() < before]
    if not len(frame):
        raise DataError(f"{table.report.source}: no events to build a taxonomy from")
    weights = pd.Series(ACTION_WEIGHTS[frame["action"].to_numpy()]).groupby(
        np.asarray(frame["category"].astype(str))
    ).sum()
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    ranked = ranked[: taxonomy_size(np.array([w for _, w in ranked]), top_k, coverage, cap)]
    categories = tuple(c for c, _ in ranked)
    names = tuple(table.category_names.get(c) or category_token(c) for c in categories)
    return Taxonomy(categories, names)
