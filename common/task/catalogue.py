"""The platform's catalogue: every category it sells in, with names. Public data, not behaviour.

The label space is chosen *from* the catalogue: published as a taxonomy file, or as the top-K
categories by privately released engagement (``client.statistics``). A simulation stands in for
the platform's product catalogue with the categories of all items in its data.
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
    def of(cls, table: EventTable) -> "Catalogue":
        """Every category of ``table``'s items, sorted, with its name or an id token."""
        categories = tuple(sorted({str(c) for c in pd.unique(table.frame["category"].astype(str))}))
        names = table.category_names
        return cls(categories, tuple(names.get(c) or category_token(c) for c in categories))

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
