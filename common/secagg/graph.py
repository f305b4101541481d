"""The public k-regular neighbour graph of SecAgg+ (Bell et al. 2020), derived from a seed.

Members are ordered by ``SHA-256(context("graph", seed) || id)`` (a seeded random permutation
anyone can recompute) and joined in a circulant (Harary) graph: position ``p`` is adjacent to
``p ± 1, ..., p ± k/2``. The degree is ``k = 2 * ceil(log2 n)`` (so the neighbourhood including
oneself is ``2 log2 n + 1`` rounded up to an odd number), or a configured even ``k``; when
``k >= n - 1`` everyone is everyone's neighbour.

Degree and threshold (Bell et al. 2020, Section 4). A client's secrets are Shamir-shared among
its ``k`` neighbours with threshold ``t``. Colluders hand the server both share kinds; a server
that tells some neighbours "i survived" and others "i dropped" gets ``t`` shares of both kinds of
``i`` only if ``2t <= k + c``, where ``c`` is the number of colluding neighbours. So
``t = ⌊(k + c)/2⌋ + 1``, and ``c < t`` always. The colluders are planned from the **roster**:
``C = ⌈γ |roster|⌉`` shops (``config.planned_colluders``), whatever members the server seats in a
round. In a complete graph all ``min(C, n - 1)`` of them may be neighbours; in a sparse graph
``c`` is the binomial tail bound at their share ``min(C, n - 1)/(n - 1)`` (union over the ``n``
neighbourhoods, ``2**-SECURITY_BITS``), since the graph seed comes from the signed advertisements
and colluders cannot choose their positions. When ``t`` would exceed ``k`` the round is refused:
a server that seats a victim with two colluders in a round of three gets no round at all. The
round finishes when no neighbourhood loses more than ``k - t`` clients, except with probability
``2**-CORRECTNESS_BITS``; the degree is the least even ``k >= 2⌈log2 n⌉`` that meets both, or
everyone. A malicious server can show one victim a member list with forged digests of members
that are not the victim's neighbours, and so try many random neighbourhoods for it; in a sparse
graph the threshold therefore also keeps the chance that ``t`` of ``k`` random neighbours collude
below ``2**-GRINDING_BITS`` per try. Examples (γ = 0.2 of a roster of n, δ = 0.1): every client is
everyone's neighbour up to a few dozen clients; ``k`` grows like ``log n`` beyond
(``secure_parameters``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from .primitives import context


SECURITY_BITS = 20  # chance that some neighbourhood holds more corrupt clients than assumed
CORRECTNESS_BITS = 10  # chance that dropouts leave some neighbourhood below the threshold (the round aborts)
GRINDING_BITS = 64  # chance per forged member list that a victim's sparse neighbourhood holds t corrupt clients


def default_degree(n: int) -> int:
    """``2 * ceil(log2 n)``: O(log n) neighbours as in Bell et al. (the least degree considered)."""
    return 2 * math.ceil(math.log2(max(n, 2)))


def _tail(k: int, p: float, c: int) -> float:
    """P(Binomial(k, p) > c)."""
    return sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(c + 1, k + 1))


def _quantile(n: int, k: int, p: float, bits: int) -> int:
    """The least c with n * P(Binomial(k, p) > c) <= 2**-bits (a union bound over n neighbourhoods)."""
    for c in range(k + 1):
        if n * _tail(k, p, c) <= 2.0**-bits:
            return c
    return k


def colluding_share(n: int, colluders: int) -> float:
    """The fraction of a member's ``n - 1`` possible neighbours that may be colluders."""
    return min(colluders, n - 1) / (n - 1) if n > 1 else 0.0


@lru_cache(maxsize=4096)
def corrupt_neighbours(n: int, k: int, colluders: int) -> int:
    """The most colluders one neighbourhood of ``k`` may hold when up to ``colluders`` shops of the roster
    sit among the ``n`` members: all of them in a complete graph (the server chose the members), a
    binomial tail bound at their share otherwise (the graph seed is not the server's), never more
    than ``min(colluders, k)``."""
    present = min(colluders, n - 1)
    if present <= 0:
        return 0
    if k >= n - 1:
        return present
    return min(present, k, _quantile(n, k, colluding_share(n, colluders), SECURITY_BITS))


def threshold_for(degree: int, n: int | None = None, colluders: int = 0) -> int:
    """``⌊(k + c)/2⌋ + 1``: more than half of the honest and colluding shares together (a strict majority
    of the neighbours when nobody is assumed to collude), so ``c`` colluders alone never reach it."""
    c = 0 if n is None else corrupt_neighbours(n, degree, colluders)
    return (degree + c) // 2 + 1


def sparse_threshold(k: int, n: int, colluders: int) -> int:
    """:func:`threshold_for`, raised until ``P(Binomial(k, share) >= t) <= 2**-GRINDING_BITS`` (seed grinding)."""
    t = threshold_for(k, n, colluders)
    if colluders > 0:
        t = max(t, _quantile(1, k, colluding_share(n, colluders), GRINDING_BITS) + 1)
    return t


@lru_cache(maxsize=4096)
def secure_parameters(n: int, colluders: int, dropout_fraction: float) -> tuple[int, int]:
    """``(k, t)`` for ``n`` members: the least even degree meeting both bounds of the module docstring,
    or the complete graph (``k = n - 1``) when none does (then ``t`` may exceed ``k``: no safe round)."""
    for k in range(default_degree(n), n - 1, 2):  # even degrees below the complete graph
        t = sparse_threshold(k, n, colluders)
        if t <= k and k - t >= _quantile(n, k, dropout_fraction, CORRECTNESS_BITS):
            return k, t
    k = n - 1
    return k, threshold_for(k, n, colluders)


@dataclass(frozen=True)
class NeighbourGraph:
    """Who shares with whom in one round, and the Shamir threshold; equal inputs give equal graphs."""

    members: tuple[int, ...]
    seed: bytes
    degree: int
    neighbours: Mapping[int, frozenset[int]]
    threshold: int

    def __getitem__(self, client_id: int) -> frozenset[int]:
        return self.neighbours[client_id]


def neighbour_graph(members: Sequence[int], seed: bytes, degree: int | None = None,
                    colluders: int = 0, dropout_fraction: float = 0.0) -> NeighbourGraph:
    """The graph over ``members`` (client ids) from the public ``seed``; see the module docstring.

    ``degree=None`` picks ``k`` and ``t`` by :func:`secure_parameters`; a given degree gets the
    threshold :func:`threshold_for` it with ``colluders`` planned. Raises ``ValueError`` when no
    threshold up to the degree withstands them (the round must not run).
    """
    ids = sorted(set(members))
    if len(ids) != len(members):
        raise ValueError("members must be distinct client ids")
    n = len(ids)
    if degree is None:
        k, t = secure_parameters(n, colluders, dropout_fraction)
    else:
        k = min(degree, n - 1)
        t = threshold_for(k, n, colluders) if k == n - 1 else sparse_threshold(k, n, colluders)
    if t > k:
        raise ValueError(f"threshold {t} exceeds the degree {k}: a round of {n} members cannot withstand "
                         f"{colluders} colluding shop(s)")
    if k >= n - 1:
        everyone = frozenset(ids)
        return NeighbourGraph(tuple(ids), seed, n - 1, {i: everyone - {i} for i in ids}, t)
    prefix = context(b"graph", seed)
    order = sorted(ids, key=lambda i: hashlib.sha256(prefix + i.to_bytes(8, "big")).digest())
    return NeighbourGraph(tuple(ids), seed, k, Circulant(tuple(order), k // 2), t)


class Circulant(Mapping[int, frozenset[int]]):
    """Each member's neighbours in the circulant graph over ``order``, made when first asked for:
    a client needs only its own (O(n log n) for the order, O(k) for its neighbourhood), the server all."""

    def __init__(self, order: tuple[int, ...], half: int) -> None:
        self._order, self._half = order, half
        self._position = {client: p for p, client in enumerate(order)}
        self._made: dict[int, frozenset[int]] = {}

    def __getitem__(self, client: int) -> frozenset[int]:
        if client not in self._made:
            p, n = self._position[client], len(self._order)
            self._made[client] = frozenset(self._order[(p + step) % n]
                                           for step in range(-self._half, self._half + 1) if step)
        return self._made[client]

    def __iter__(self):
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)
