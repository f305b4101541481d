"""The platform's catalogue: every category it sells in, with names. Public data, not behaviour.

The label space is chosen *from* the catalogue: published as a taxonomy file, or as the top-K
categories by privately released engagement (``client.statistics``). The catalogue itself must
not be read off the events: a category only one customer touched would be a candidate only when
that customer is there. It comes from the platform (a category list), from a dataset that ships
one (a manifest's ``catalogue``), or, for a log with none, from a DP partition selection whose δ
is in the ledger (``client.statistics.release_partition_selection``). ``observed`` (the categories
the events hold) is for non-private uses only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.schema import EventTable
from .taxonomy import Taxonomy, category_token, taxonomy_size


@dataclass(frozen=True)
class Catalogue:
    categories: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.names):
            raise ValueError("catalogue needs one name per category")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("catalogue categories must be unique")
        if not self.categories:
            raise ValueError("catalogue is empty")

    def __len__(self) -> int:
        return len(self.categories)

    @classmethod
    def observed(cls, table: EventTable) -> "Catalogue":
        """Every category ``table``'s events hold, sorted, with its name or an id token: behaviour data,
        for non-private uses only (baselines, references)."""
        categories = tuple(sorted({str(c) for c in pd.unique(table.frame["category"].astype(str))}))
        return cls.named(categories, table.category_names)

    @classmethod
    def named(cls, categories, names: dict[str, str]) -> "Catalogue":
        categories = tuple(str(c) for c in categories)
        return cls(categories, tuple(names.get(c) or category_token(c) for c in categories))

    @classmethod
    def public(cls, table: EventTable) -> "Catalogue | None":
        """The catalogue that came with ``table`` (a dataset's manifest), or None when it has none."""
        if table.public_categories is None:
            return None
        return cls.named(sorted(table.public_categories), table.category_names)

    @classmethod
    def published(cls, path) -> "tuple[Catalogue, tuple[int, int] | None]":
        """The platform's catalogue, and its calendar when one comes with it, from ``path``: a category list,
        or a dataset directory's manifest (its ``catalogue`` and ``window``; its events are not read)."""
        import json
        from pathlib import Path

        from ..data.load import MANIFEST
        from ..data.schema import DataError

        path = Path(path)
        if not path.is_dir():
            return cls.read(path), None
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: a directory needs a {MANIFEST} manifest ({exc})") from None
        if not manifest.get("catalogue"):
            raise DataError(f"{path / MANIFEST}: names no 'catalogue' (a category list); its events are behaviour "
                            "data and do not make one: give the platform's category list instead")
        window = manifest.get("window")
        return cls.read(path / manifest["catalogue"]), (int(window[0]), int(window[1])) if window else None

    @classmethod
    def read(cls, path) -> "Catalogue":
        """The platform's category list (``category_id[,category_name]`` CSV, or one id per line)."""
        from ..data.load import read_catalogue

        categories, names = read_catalogue(path)
        return cls.named(categories, {c: n for c, n in zip(categories, names) if n})

    def positions(self, categories) -> np.ndarray:
        """Catalogue position of each category id (-1 for ids the catalogue does not list)."""
        cat = pd.Categorical(np.asarray(categories).astype(str))
        lookup = {c: i for i, c in enumerate(self.categories)}
        per_code = np.array([lookup.get(str(c), -1) for c in cat.categories], dtype=np.int64)
        codes = np.asarray(cat.codes)
        out = np.full(len(codes), -1, dtype=np.int64)
        out[codes >= 0] = per_code[codes[codes >= 0]]
        return out

    def top_k(self, scores: np.ndarray, k: int = 0, coverage: float = 0.9, cap: int = 2000) -> Taxonomy:
        """The taxonomy of the ``k`` highest-scoring categories (``k=0``: as many as cover ``coverage``).

        Ties go by id, so it is deterministic.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self),):
            raise ValueError(f"{scores.shape} scores for a catalogue of {len(self)} categories")
        size = taxonomy_size(scores, k, coverage, cap)
        if not k:  # by coverage: only categories with evidence
            size = max(1, min(size, int((scores > 0).sum())))
        order = sorted(range(len(self)), key=lambda i: (-scores[i], self.categories[i]))[:size]
        return Taxonomy(tuple(self.categories[i] for i in order), tuple(self.names[i] for i in order))

    def to_dict(self) -> dict:
        return {"categories": list(self.categories), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> "Catalogue":
        return cls(tuple(str(c) for c in data["categories"]), tuple(str(n) for n in data["names"]))
