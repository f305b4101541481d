"""The public k-regular neighbour graph of SecAgg+ (Bell et al. 2020), derived from a seed.

Members are ordered by ``SHA-256(context("graph", seed) || id)`` (a seeded random permutation
anyone can recompute) and joined in a circulant (Harary) graph: position ``p`` is adjacent to
``p ± 1, ..., p ± k/2``. The degree is ``k = 2 * ceil(log2 n)`` (so the neighbourhood including
oneself is ``2 log2 n + 1`` rounded up to an odd number), or a configured even ``k``; when
``k >= n - 1`` everyone is everyone's neighbour.

Threshold: a client's secrets are Shamir-shared among its ``k`` neighbours (not itself) with
``t = k // 2 + 1``, a strict majority of the neighbours. So a survivor's self-mask needs ``t`` of
its neighbours to answer the unmasking stage, and a server that lied about who dropped could
not collect ``t`` shares of both kinds of one client from disjoint honest majorities.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from .primitives import context


def default_degree(n: int) -> int:
    """``2 * ceil(log2 n)``: O(log n) neighbours as in Bell et al."""
    return 2 * math.ceil(math.log2(max(n, 2)))


def threshold_for(degree: int) -> int:
    """Shamir threshold over a neighbourhood of ``degree`` clients: a strict majority."""
    return degree // 2 + 1


@dataclass(frozen=True)
class NeighbourGraph:
    """Who shares with whom in one round; equal seeds and members give equal graphs."""

    members: tuple[int, ...]
    seed: bytes
    degree: int
    neighbours: Mapping[int, frozenset[int]]

    @property
    def threshold(self) -> int:
        return threshold_for(self.degree)

    def __getitem__(self, client_id: int) -> frozenset[int]:
        return self.neighbours[client_id]


def neighbour_graph(members: Sequence[int], seed: bytes, degree: int | None = None) -> NeighbourGraph:
    """The graph over ``members`` (client ids) from the public ``seed``; see the module docstring."""
    ids = sorted(set(members))
    if len(ids) != len(members):
        raise ValueError("members must be distinct client ids")
    n = len(ids)
    k = default_degree(n) if degree is None else degree
    if k >= n - 1:
        everyone = frozenset(ids)
        return NeighbourGraph(tuple(ids), seed, n - 1, {i: everyone - {i} for i in ids})
    prefix = context(b"graph", seed)
    order = sorted(ids, key=lambda i: hashlib.sha256(prefix + i.to_bytes(8, "big")).digest())
    half = k // 2
    neighbours = {
        client: frozenset(order[(p + step) % n] for step in range(-half, half + 1) if step)
        for p, client in enumerate(order)
    }
    return NeighbourGraph(tuple(ids), seed, k, neighbours)
