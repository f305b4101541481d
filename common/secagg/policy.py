"""A shop's own floors for a secure round: what the server may make stricter, never weaker.

The server proposes the round's parameters (:class:`SecAggConfig`); the shop checks them against
its node-local :class:`SecAggPolicy` before it makes a key. A server that lowers ``min_clients``
(to isolate one shop), the degree, the threshold or the planned colluders (to need fewer of them),
or raises the clip or weight bound (to hide an outsized input) is refused with the field named.
The colluders a threshold must withstand are planned from the roster the shop pinned
(``⌈γ · |roster|⌉``), never from the round the server assembles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import DEFAULT_COLLUDING_FRACTION, SecAggConfig, planned_colluders
from .errors import SecAggConfigError, SecAggProtocolError
from .graph import NeighbourGraph, default_degree, sparse_threshold, threshold_for


@dataclass(frozen=True)
class SecAggPolicy:
    """Node-local floors. ``min_degree=None`` requires at least the automatic ``2⌈log2 n⌉`` degree;
    ``colluding_fraction`` γ plans ``⌈γ · |roster|⌉`` colluding shops."""

    min_clients: int = 3
    min_degree: int | None = None
    max_clip: float = 2.0**20
    max_weight: int = 2**16
    colluding_fraction: float = DEFAULT_COLLUDING_FRACTION

    def __post_init__(self) -> None:
        if not isinstance(self.min_clients, int) or self.min_clients < 3:
            raise SecAggConfigError(f"policy: min_clients must be an int >= 3, got {self.min_clients!r}")
        if self.min_degree is not None and (not isinstance(self.min_degree, int) or self.min_degree < 2):
            raise SecAggConfigError(f"policy: min_degree must be None or an int >= 2, got {self.min_degree!r}")
        if not (isinstance(self.max_clip, (int, float)) and math.isfinite(self.max_clip) and self.max_clip > 0):
            raise SecAggConfigError(f"policy: max_clip must be a finite number > 0, got {self.max_clip!r}")
        if not (isinstance(self.colluding_fraction, (int, float)) and 0 <= self.colluding_fraction < 0.5):
            raise SecAggConfigError(f"policy: colluding_fraction must be in [0, 0.5), got {self.colluding_fraction!r}")
        if not isinstance(self.max_weight, int) or self.max_weight < 1:
            raise SecAggConfigError(f"policy: max_weight must be an int >= 1, got {self.max_weight!r}")

    def colluders(self, roster_size: int) -> int:
        """The colluding shops this shop plans for: ``⌈γ · |roster|⌉`` of its pinned roster."""
        return planned_colluders(roster_size, self.colluding_fraction)

    def required_degree(self, members: int) -> int:
        """The least degree this shop accepts for a graph of ``members`` (everyone, when that is fewer)."""
        wanted = default_degree(members) if self.min_degree is None else self.min_degree
        return min(wanted, members - 1)

    def check_graph(self, graph: NeighbourGraph, roster_size: int) -> None:
        """Refuse a graph whose degree or threshold is below this shop's floors (raises :class:`SecAggProtocolError`)."""
        n = len(graph.members)
        self.check_degree(graph.degree, n)
        complete = graph.degree >= n - 1
        colluders = self.colluders(roster_size)
        least = (threshold_for if complete else sparse_threshold)(graph.degree, n, colluders)
        if graph.threshold < least:
            raise SecAggProtocolError(f"threshold {graph.threshold} is below {least}, the least that withstands "
                                      f"{colluders} colluding shop(s) of the roster among {n} members")

    def check_config(self, config: SecAggConfig, roster_size: int) -> None:
        """Refuse a proposed config weaker than these floors (raises :class:`SecAggProtocolError`)."""
        problems = []
        if config.min_clients < self.min_clients:
            problems.append(f"min_clients={config.min_clients} is below this shop's floor {self.min_clients}")
        if config.clip > self.max_clip:
            problems.append(f"clip={config.clip:g} is above this shop's bound {self.max_clip:g}")
        if config.max_weight > self.max_weight:
            problems.append(f"max_weight={config.max_weight} is above this shop's bound {self.max_weight}")
        if config.colluders < self.colluders(roster_size):
            problems.append(f"colluders={config.colluders} is below the {self.colluders(roster_size)} this shop plans "
                            f"for (⌈{self.colluding_fraction:g} × {roster_size} shops on its roster⌉): a lower "
                            "threshold needs fewer colluders")
        if problems:
            raise SecAggProtocolError("refusing the server's round parameters: " + "; ".join(problems))

    def check_members(self, members: int, config: SecAggConfig) -> None:
        """Refuse a round of ``members`` in which no graph withstands the planned colluders.

        Even the complete graph of the participants must leave ``t <= k``: otherwise colluders' shares
        plus what the server can split off the honest neighbours would reach ``t``.
        """
        k = members - 1
        t = threshold_for(k, members, config.colluders)
        if k < 1 or t > k:
            raise SecAggProtocolError(
                f"a round of {members} shops cannot withstand {config.colluders} colluding shop(s) (threshold {t} "
                f"> {k} neighbours): refusing it; such a round needs more shops")

    def check_degree(self, degree: int, members: int) -> None:
        """Refuse a graph whose degree (hence threshold ``degree // 2 + 1``) is below the floor."""
        if degree < self.required_degree(members):
            raise SecAggProtocolError(f"the graph over {members} members has degree {degree}, below this "
                                      f"shop's floor {self.required_degree(members)}")
