"""The server side of a SecAgg+ round: relays, sums masked inputs, removes masks, decodes.

Semi-honest server: it follows the protocol, and everything it sees is what
:mod:`common.secagg.messages` declares. It never holds both share kinds of one client (checked
explicitly, :class:`ShareKindViolation`). When dropouts make the round impossible it raises
:class:`SecAggAbort` at the earliest stage it can tell, and forgets the partial sum and shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from .config import SecAggConfig
from .errors import SecAggAbort, SecAggIntegrityError, SecAggProtocolError, ShareKindViolation
from .graph import NeighbourGraph, neighbour_graph
from .masks import add_signed, pair_mask, pair_sign, self_mask
from .messages import (
    KeyAdvertisement, KeyBroadcast, MaskedInput, RoundSetup, ShareDistribution, ShareRelay, UnmaskRequest,
    UnmaskResponse,
)
from .primitives import (
    KEY_BYTES, MAX_ID, Randomness, agree, commitment, default_randomness, private_key_from_bytes, public_bytes,
)
from .quantize import decode
from .shamir import reconstruct, share_from_bytes

M = TypeVar("M")


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What the server learns: ``Σ w_i clip(x_i)`` and ``Σ w_i`` over ``contributors``."""

    weighted_sum: np.ndarray  # float64, length vector_length
    total_weight: int
    contributors: tuple[int, ...]  # clients whose masked input is in the sum

    @property
    def mean(self) -> np.ndarray:
        """The weighted mean ``Σ w_i x̄_i / Σ w_i`` (error bound: see :mod:`common.secagg.quantize`)."""
        if self.total_weight == 0:
            raise ValueError("total weight is 0: every contributor sent weight 0, there is no mean")
        return self.weighted_sum / self.total_weight


class ServerState(Enum):
    NEW = "new"
    SETUP_SENT = "setup sent"
    KEYS_BROADCAST = "keys broadcast"
    SHARES_RELAYED = "shares relayed"
    UNMASK_REQUESTED = "unmask requested"
    DONE = "done"
    ABORTED = "aborted"


class SecAggServer:
    """One round: ``setup → collect_keys → collect_shares → collect_masked_inputs → collect_unmask_responses``.

    Each ``collect_*`` takes the replies that arrived (a client whose reply is missing has
    dropped), and returns the next stage's message for every live client. A reply for another
    round, from an unknown or dropped client, or twice from one client raises
    :class:`SecAggProtocolError`; any error ends the round (state ``ABORTED``).
    """

    def __init__(
        self, config: SecAggConfig, round_id: int, participants: Sequence[int],
        randomness: Randomness = default_randomness,
    ) -> None:
        if not 0 <= round_id <= MAX_ID:
            raise ValueError(f"round_id must be in [0, 2**64), got {round_id}")
        ids = list(participants)
        if len(set(ids)) != len(ids) or any(not 0 <= i <= MAX_ID for i in ids):
            raise ValueError("participants must be distinct client ids in [0, 2**64)")
        if not config.min_clients <= len(ids) <= config.max_clients:
            raise ValueError(
                f"{len(ids)} participants: need between min_clients={config.min_clients} and "
                f"max_clients={config.max_clients}"
            )
        self.config = config
        self.round_id = round_id
        self.participants = tuple(sorted(ids))
        self.graph_seed = randomness(KEY_BYTES)
        self.state = ServerState.NEW
        self.graph: NeighbourGraph | None = None

    # ------------------------------------------------------------ plumbing

    def _stage(self, expected: ServerState, after: ServerState, step: Callable[[], M]) -> M:
        if self.state is not expected:
            raise SecAggProtocolError(f"server is in state '{self.state.value}', expected '{expected.value}'")
        try:
            result = step()
        except Exception:
            self._forget()
            raise
        self.state = after
        return result

    def _forget(self) -> None:
        """Drop everything secret-dependent: on abort nothing partial survives."""
        self.state = ServerState.ABORTED
        self._sum = None
        self._self_shares: dict[int, dict[int, int]] = {}
        self._key_shares: dict[int, dict[int, int]] = {}

    def _accept(self, messages: Iterable[M], allowed: Iterable[int]) -> dict[int, M]:
        allowed = set(allowed)
        accepted: dict[int, M] = {}
        for message in messages:
            name, sender, round_id = type(message).__name__, message.client_id, message.round_id  # type: ignore
            if round_id != self.round_id:
                raise SecAggProtocolError(
                    f"{name} from client {sender} is for round {round_id}, this is round {self.round_id} "
                    "(replayed or stale)"
                )
            if sender not in allowed:
                raise SecAggProtocolError(f"{name} from client {sender}, who is not live in this stage")
            if sender in accepted:
                raise SecAggProtocolError(f"client {sender} sent {name} twice")
            accepted[sender] = message
        return accepted

    def _require_live_neighbours(self, owners: Iterable[int], live: set[int], stage: str) -> None:
        assert self.graph is not None
        t = self.graph.threshold
        short = {j: len(self.graph[j] & live) for j in owners if len(self.graph[j] & live) < t}
        if short:
            raise SecAggAbort(
                f"{stage}: client(s) {sorted(short)} keep only {sorted(set(short.values()))} live neighbours, "
                f"fewer than the threshold t={t}; the round cannot be unmasked"
            )

    def _require_min_clients(self, live: set[int], stage: str) -> None:
        if len(live) < self.config.min_clients:
            raise SecAggAbort(f"{stage}: only {len(live)} clients left, min_clients={self.config.min_clients}")

    # ------------------------------------------------------------ stage 1

    def setup(self) -> RoundSetup:
        """The message every participant gets first (identical for all)."""
        return self._stage(
            ServerState.NEW, ServerState.SETUP_SENT,
            lambda: RoundSetup(self.round_id, self.participants, self.graph_seed, self.config),
        )

    # ------------------------------------------------------------ stage 2

    def collect_keys(self, advertisements: Iterable[KeyAdvertisement]) -> dict[int, KeyBroadcast]:
        """Build the graph over the clients whose keys arrived; send each its neighbours' keys."""
        return self._stage(ServerState.SETUP_SENT, ServerState.KEYS_BROADCAST, lambda: self._keys(advertisements))

    def _keys(self, advertisements: Iterable[KeyAdvertisement]) -> dict[int, KeyBroadcast]:
        self._ads = self._accept(advertisements, self.participants)
        keys = [k for ad in self._ads.values() for k in (ad.share_public_key, ad.mask_public_key)]
        if len(set(keys)) != len(keys):
            raise SecAggIntegrityError("two advertised public keys are equal")
        members = set(self._ads)
        self._require_min_clients(members, "key advertisement")
        self.graph = neighbour_graph(sorted(members), self.graph_seed, self.config.degree)
        self.members = self.graph.members
        broadcasts = {}
        for i in self.members:
            neighbours = tuple(sorted(self.graph[i]))
            broadcasts[i] = KeyBroadcast(
                self.round_id, i, self.members, neighbours,
                tuple(self._ads[j].share_public_key for j in neighbours),
                tuple(self._ads[j].mask_public_key for j in neighbours),
            )
        return broadcasts

    # ------------------------------------------------------------ stage 3

    def collect_shares(self, distributions: Iterable[ShareDistribution]) -> dict[int, ShareRelay]:
        """Relay every sealed share to its receiver; abort if someone can no longer be unmasked."""
        return self._stage(
            ServerState.KEYS_BROADCAST, ServerState.SHARES_RELAYED, lambda: self._shares(distributions)
        )

    def _shares(self, distributions: Iterable[ShareDistribution]) -> dict[int, ShareRelay]:
        assert self.graph is not None
        received = self._accept(distributions, self.members)
        for sender, message in received.items():
            if set(message.receiver_ids) != self.graph[sender]:
                raise SecAggProtocolError(f"client {sender} addressed shares to clients other than its neighbours")
        self.sharers = frozenset(received)
        self._require_min_clients(set(self.sharers), "share distribution")
        self._require_live_neighbours(self.sharers, set(self.sharers), "share distribution")
        inbox: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.sharers}
        for sender in sorted(received):
            for receiver, sealed in zip(received[sender].receiver_ids, received[sender].ciphertexts):
                if receiver in inbox:
                    inbox[receiver].append((sender, sealed))
        return {
            i: ShareRelay(self.round_id, i, tuple(s for s, _ in box), tuple(c for _, c in box))
            for i, box in inbox.items()
        }

    # ------------------------------------------------------------ stage 4

    def collect_masked_inputs(self, inputs: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Add the masked inputs up as they arrive (only the running sum is kept); ask for shares."""
        return self._stage(
            ServerState.SHARES_RELAYED, ServerState.UNMASK_REQUESTED, lambda: self._inputs(inputs)
        )

    def _inputs(self, inputs: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        assert self.graph is not None
        total = np.zeros(self.config.masked_length, dtype=np.uint32)
        seen: set[int] = set()
        for message in inputs:
            if message.client_id in seen:
                raise SecAggProtocolError(f"client {message.client_id} sent MaskedInput twice")
            self._accept([message], self.sharers)
            if message.masked.dtype != np.uint32 or message.masked.shape != (self.config.masked_length,):
                raise SecAggProtocolError(
                    f"masked input of client {message.client_id} must be uint32 of length {self.config.masked_length}"
                )
            np.add(total, message.masked, out=total)
            seen.add(message.client_id)
        self._sum = total
        self.survivors = frozenset(seen)
        self.dropped = self.sharers - self.survivors
        self._require_min_clients(set(self.survivors), "masked input")
        self._require_live_neighbours(self.survivors, set(self.survivors), "masked input")
        self._require_live_neighbours(self._dropped_to_unmask(), set(self.survivors), "masked input")
        self._self_shares = {j: {} for j in self.survivors}
        self._key_shares = {j: {} for j in self._dropped_to_unmask()}
        survivors, dropped = tuple(sorted(self.survivors)), tuple(sorted(self.dropped))
        return {i: UnmaskRequest(self.round_id, i, survivors, dropped) for i in survivors}

    def _dropped_to_unmask(self) -> list[int]:
        """Dropped sharers with a surviving neighbour: their pair masks are in the sum."""
        assert self.graph is not None
        return sorted(j for j in self.dropped if self.graph[j] & self.survivors)

    # ------------------------------------------------------------ stage 5: unmask and decode

    def collect_unmask_responses(self, responses: Iterable[UnmaskResponse]) -> AggregateResult:
        """Rebuild ``b_j`` of survivors and mask keys of the dropped, remove all masks, decode."""
        return self._stage(ServerState.UNMASK_REQUESTED, ServerState.DONE, lambda: self._unmask(responses))

    def _hold(self, kind: str, owner: int, holder: int, raw: bytes) -> None:
        """Store one share, never letting both kinds of one owner into the server's hands."""
        mine, other = (self._self_shares, self._key_shares) if kind == "self" else (self._key_shares, self._self_shares)
        if other.get(owner):
            raise ShareKindViolation(
                f"client {holder} sent a {kind} share of client {owner}, but the server already holds shares "
                "of the other kind for that client; refusing to hold both"
            )
        if owner not in mine:
            wanted = "self" if owner in self.survivors else "key" if owner in self._key_shares else None
            if wanted is not None:
                raise ShareKindViolation(
                    f"client {holder} sent a {kind} share of client {owner}, whose "
                    f"{'survival' if wanted == 'self' else 'dropout'} calls for a {wanted} share only; refusing it"
                )
            raise SecAggProtocolError(f"client {holder} sent a share of client {owner}, which was not requested")
        assert self.graph is not None
        if holder not in self.graph[owner]:
            raise SecAggProtocolError(f"client {holder} is not a neighbour of client {owner} and holds no share")
        mine[owner][holder] = share_from_bytes(raw)

    def _unmask(self, responses: Iterable[UnmaskResponse]) -> AggregateResult:
        assert self.graph is not None and self._sum is not None
        for response in self._accept(responses, self.survivors).values():
            for owner, raw in zip(response.self_mask_owners, response.self_mask_shares):
                self._hold("self", owner, response.client_id, raw)
            for owner, raw in zip(response.mask_key_owners, response.mask_key_shares):
                self._hold("key", owner, response.client_id, raw)
        t = self.graph.threshold
        short = sorted(j for shares in (self._self_shares, self._key_shares) for j in shares if len(shares[j]) < t)
        if short:
            raise SecAggAbort(f"unmasking: fewer than t={t} shares arrived for client(s) {short}")
        length = self.config.masked_length
        total = self._sum
        for owner, shares in self._self_shares.items():
            seed = reconstruct(shares, t)
            if commitment(seed, self.round_id, owner) != self._ads[owner].self_mask_commitment:
                raise SecAggIntegrityError(f"reconstructed self-mask seed of client {owner} fails its commitment")
            add_signed(total, self_mask(seed, self.round_id, owner, length), -1)
        for owner, shares in self._key_shares.items():
            private = private_key_from_bytes(reconstruct(shares, t))
            if public_bytes(private) != self._ads[owner].mask_public_key:
                raise SecAggIntegrityError(f"reconstructed mask key of client {owner} does not match its public key")
            for survivor in sorted(self.graph[owner] & self.survivors):
                secret = agree(private, self._ads[survivor].mask_public_key)
                mask = pair_mask(secret, self.round_id, survivor, owner, length)
                add_signed(total, mask, -pair_sign(survivor, owner))
        weighted_sum, total_weight = decode(total, self.config)
        result = AggregateResult(weighted_sum, total_weight, tuple(sorted(self.survivors)))
        self._forget()
        return result
