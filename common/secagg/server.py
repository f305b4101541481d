"""The server side of a SecAgg+ round: relays, sums masked inputs, removes masks, decodes.

The honest server follows the protocol, and everything it sees is what
:mod:`common.secagg.messages` declares. It never holds both share kinds of one client (checked
explicitly, :class:`ShareKindViolation`). A client that misbehaves at any stage (a reply for
another round, twice, unsigned or off the roster, shares for non-neighbours, a malformed input,
a weight that is not a power of two up to ``max_weight``, a revealed key that does not open the
share it holds) is excluded on its own and the round goes on without it; when dropouts and
exclusions make the round impossible it raises :class:`SecAggAbort` at the earliest stage it can
tell, and forgets the partial sum and shares.

What one malicious client cannot do: exclude another (only verified advertisements count in the
clash checks, and a holder's lie about a share is caught against the ciphertext the server
relayed), abort the round by lying (a bad share is identified by itself: no subset search to
exhaust; weights are checked one by one), or push the mean outside the region honest inputs can
reach (the unmasked sum is projected onto the clip box and the norm ball, never discarded). What it
can: make its *own* secrets unrecoverable by dealing garbage; that is shown (every share it dealt
opens, yet they do not rebuild what it committed to), the round aborts only if its secret is needed,
and :attr:`SecAggAbort.culprits` names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from .config import SecAggConfig
from .errors import SecAggAbort, SecAggError, SecAggIntegrityError, SecAggProtocolError, ShareKindViolation
from .graph import NeighbourGraph, neighbour_graph
from .identity import Roster, advertisement_digest, advertisement_payload, graph_seed
from .keybatch import SignatureCache, verify_advertisement
from .masks import add_signed, pair_mask, pair_sign, self_mask
from .messages import (
    ConsistencyRequest, ConsistencySignature, KeyAdvertisement, KeyBroadcast, MaskedInput, RoundSetup,
    ShareDistribution, ShareRelay, UnmaskRequest, UnmaskResponse,
)
from .primitives import MAX_ID, agree, commitment, private_key_from_bytes, public_bytes

from .masks import KEY_SHARE, SEED_SHARE, share_associated_data
from .primitives import open_once
from .quantize import bound_sum, decode
from .shamir import SECRET_BYTES, interpolate, share_from_bytes

M = TypeVar("M")


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What the server learns: ``Σ w_i clip(x_i)`` and ``Σ w_i`` over ``contributors``."""

    weighted_sum: np.ndarray  # float64, length vector_length
    total_weight: int
    contributors: tuple[int, ...]  # clients whose masked input is in the sum
    projected: bool = False  # the sum lay outside what honest inputs can give and was projected onto it

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
    SIGNATURES_REQUESTED = "survivor signatures requested"
    UNMASK_REQUESTED = "unmask requested"
    DONE = "done"
    ABORTED = "aborted"


class SecAggServer:
    """One round: ``setup → collect_keys → collect_shares → collect_masked_inputs → collect_signatures
    → collect_unmask_responses``.

    Each ``collect_*`` takes the replies that arrived (a client whose reply is missing has
    dropped), and returns the next stage's message for every live client. A client whose reply is
    for another round, from an unknown or dropped client, repeated, or otherwise wrong is excluded
    (``excluded`` says why); the round aborts (state ``ABORTED``) only when it cannot finish.
    ``roster`` (optional: clients check it anyway) lets the server exclude unlisted shops early;
    ``verified``: signatures checked in earlier rounds of the run (:class:`.keybatch.SignatureCache`).
    """

    def __init__(
        self, config: SecAggConfig, round_id: int, participants: Sequence[int], run_id: int = 0,
        roster: Roster | None = None, verified: SignatureCache | None = None,
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
        if not 0 <= run_id <= MAX_ID:
            raise ValueError(f"run_id must be in [0, 2**64), got {run_id}")
        self.config = config
        self.round_id, self.run_id = round_id, run_id
        self.roster = roster
        self.verified = verified if verified is not None else SignatureCache()
        self.participants = tuple(sorted(ids))
        self.state = ServerState.NEW
        self.graph: NeighbourGraph | None = None
        self.excluded: dict[int, str] = {}  # client -> why it was left out of the round

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
        self._sealed: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self._self_shares: dict[int, dict[int, int]] = {}
        self._key_shares: dict[int, dict[int, int]] = {}

    def _exclude(self, client: int, reason: str) -> None:
        self.excluded.setdefault(client, reason)

    def _accept(self, messages: Iterable[M], allowed: Iterable[int]) -> dict[int, M]:
        """The replies of live clients, one each; a client that sends a wrong or second reply is excluded."""
        allowed = set(allowed)
        accepted: dict[int, M] = {}
        for message in messages:
            name, sender, round_id = type(message).__name__, message.client_id, message.round_id  # type: ignore
            if sender not in allowed or sender in self.excluded:
                continue  # not live in this stage: a stale or forged reply changes nothing
            if round_id != self.round_id:
                self._exclude(sender, f"{name} is for round {round_id}, this is round {self.round_id}")
            elif sender in accepted:
                self._exclude(sender, f"sent {name} twice")
            else:
                accepted[sender] = message
        return {i: m for i, m in accepted.items() if i not in self.excluded}

    def _require_live_neighbours(self, owners: Iterable[int], live: set[int], stage: str) -> None:
        assert self.graph is not None
        t = self.graph.threshold
        short = {j: len(self.graph[j] & live) for j in owners if len(self.graph[j] & live) < t}
        if short:
            raise SecAggAbort(
                f"{stage}: client(s) {sorted(short)} keep only {sorted(set(short.values()))} live neighbours, "
                f"fewer than the threshold t={t}; the round cannot be unmasked"
            )

    def _graph(self, members: list[int]) -> NeighbourGraph:
        c = self.config
        try:
            return neighbour_graph(members, self.graph_seed, c.degree, c.colluders, c.dropout_fraction)
        except ValueError as err:
            raise SecAggAbort(f"key advertisement: {err}") from None

    def _require_min_clients(self, live: set[int], stage: str) -> None:
        if len(live) < self.config.min_clients:
            raise SecAggAbort(f"{stage}: only {len(live)} clients left, min_clients={self.config.min_clients}")

    # ------------------------------------------------------------ stage 1

    def setup(self) -> RoundSetup:
        """The message every participant gets first (identical for all)."""
        return self._stage(
            ServerState.NEW, ServerState.SETUP_SENT,
            lambda: RoundSetup(self.round_id, self.run_id, self.participants, self.config),
        )

    # ------------------------------------------------------------ stage 2

    def collect_keys(self, advertisements: Iterable[KeyAdvertisement]) -> dict[int, KeyBroadcast]:
        """Build the graph over the clients whose keys arrived; send each its neighbours' keys."""
        return self._stage(ServerState.SETUP_SENT, ServerState.KEYS_BROADCAST, lambda: self._keys(advertisements))

    def _keys(self, advertisements: Iterable[KeyAdvertisement]) -> dict[int, KeyBroadcast]:
        ads = self._accept(advertisements, self.participants)
        payloads = {i: advertisement_payload(self.run_id, self.round_id, i, ad.share_public_key, ad.mask_public_key,
                                             ad.self_mask_commitment) for i, ad in ads.items()}
        for i, ad in ads.items():
            if self.roster is not None and ad.identity_key not in self.roster:
                self._exclude(i, "its identity key is not on the roster")
                continue
            try:
                verify_advertisement(self.verified, payloads[i], self.run_id, self.round_id, i, ad.identity_key,
                                     ad.proof, f"advertisement of client {i}")
            except SecAggIntegrityError as err:
                self._exclude(i, str(err))
        verified = {i: ad for i, ad in ads.items() if i not in self.excluded}
        for field in ("share_public_key", "mask_public_key", "identity_key"):  # among verified ads only: a
            owners: dict[bytes, list[int]] = {}  # copy under a junk signature excludes nobody but its sender
            for i, ad in verified.items():
                owners.setdefault(getattr(ad, field), []).append(i)
            for clash in (ids for ids in owners.values() if len(ids) > 1):
                for i in clash:
                    self._exclude(i, f"advertised a {field.replace('_', ' ')} another client also advertised")
        self._ads = {i: ad for i, ad in ads.items() if i not in self.excluded}
        members = set(self._ads)
        self._require_min_clients(members, "key advertisement")
        self._digests = {i: advertisement_digest(payloads[i], ad.identity_key) for i, ad in self._ads.items()}
        self.graph_seed = graph_seed(self.run_id, self.round_id, self._digests)
        self.graph = self._graph(sorted(members))
        self.members = self.graph.members
        digests = tuple(self._digests[i] for i in self.members)
        broadcasts = {}
        for i in self.members:
            neighbours = tuple(sorted(self.graph[i]))
            ads_ = [self._ads[j] for j in neighbours]
            broadcasts[i] = KeyBroadcast(
                self.round_id, i, self.members, digests, neighbours,
                tuple(a.share_public_key for a in ads_), tuple(a.mask_public_key for a in ads_),
                tuple(a.self_mask_commitment for a in ads_), tuple(a.identity_key for a in ads_),
                tuple(a.signature for a in ads_), tuple(a.batch_first_round for a in ads_),
                tuple(a.batch_path for a in ads_),
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
        for sender, message in list(received.items()):
            if set(message.receiver_ids) != self.graph[sender] or len(message.receiver_ids) != len(self.graph[sender]):
                self._exclude(sender, "addressed shares to clients other than its neighbours")
                del received[sender]
        self.sharers = frozenset(received)
        self._sealed = {(sender, receiver): (seed, key) for sender, message in received.items()
                        for receiver, seed, key in zip(message.receiver_ids, message.seed_shares, message.key_shares)}
        self._require_min_clients(set(self.sharers), "share distribution")
        self._require_live_neighbours(self.sharers, set(self.sharers), "share distribution")
        inbox: dict[int, list[int]] = {i: [] for i in self.sharers}
        for sender in sorted(received):
            for receiver in received[sender].receiver_ids:
                if receiver in inbox:
                    inbox[receiver].append(sender)
        return {
            i: ShareRelay(self.round_id, i, tuple(senders), tuple(self._sealed[(s, i)][0] for s in senders),
                          tuple(self._sealed[(s, i)][1] for s in senders))
            for i, senders in inbox.items()
        }

    # ------------------------------------------------------------ stage 4

    def collect_masked_inputs(self, inputs: Iterable[MaskedInput]) -> dict[int, ConsistencyRequest]:
        """Add the masked inputs up (only the running sum is kept); ask the survivors to sign who survived."""
        return self._stage(
            ServerState.SHARES_RELAYED, ServerState.SIGNATURES_REQUESTED, lambda: self._inputs(inputs)
        )

    def _inputs(self, inputs: Iterable[MaskedInput]) -> dict[int, ConsistencyRequest]:
        assert self.graph is not None
        total = np.zeros(self.config.masked_length, dtype=np.uint32)
        seen: dict[int, int] = {}  # survivor -> its public weight
        for message in inputs:
            client = message.client_id
            if client not in self.sharers or client in self.excluded or client in seen:
                continue  # a second input after the first was summed changes nothing
            if message.round_id != self.round_id:
                self._exclude(client, f"MaskedInput is for round {message.round_id}")
                continue
            if message.masked.dtype != np.uint32 or message.masked.shape != (self.config.masked_length,):
                self._exclude(client, f"masked input must be uint32 of length {self.config.masked_length}")
                continue
            if not valid_weight(message.weight, self.config.max_weight):
                self._exclude(client, f"weight {message.weight} is not a power of two in [1, max_weight="
                                      f"{self.config.max_weight}]")
                continue
            np.add(total, message.masked, out=total)
            seen[client] = int(message.weight)
        self.total_weight = sum(seen.values())
        self._sum = total
        self.survivors = frozenset(seen)
        self.dropped = self.sharers - self.survivors
        self._require_min_clients(set(self.survivors), "masked input")
        self._require_live_neighbours(self.survivors, set(self.survivors), "masked input")
        self._require_live_neighbours(self._dropped_to_unmask(), set(self.survivors), "masked input")
        self._self_shares = {j: {} for j in self.survivors}
        self._key_shares = {j: {} for j in self._dropped_to_unmask()}
        survivors, dropped = tuple(sorted(self.survivors)), tuple(sorted(self.dropped))
        return {i: ConsistencyRequest(self.round_id, i, survivors, dropped) for i in survivors}

    # ------------------------------------------------------------ stage 5: the consistency check

    def collect_signatures(self, signatures: Iterable[ConsistencySignature]) -> dict[int, UnmaskRequest]:
        """Relay each survivor's consistency tags to its neighbours, with the survivor set, as unmask requests."""
        return self._stage(
            ServerState.SIGNATURES_REQUESTED, ServerState.UNMASK_REQUESTED, lambda: self._signatures(signatures)
        )

    def _signatures(self, signatures: Iterable[ConsistencySignature]) -> dict[int, UnmaskRequest]:
        """Relay each survivor's tags to their receivers (the server cannot check or forge them)."""
        assert self.graph is not None
        survivors, dropped = tuple(sorted(self.survivors)), tuple(sorted(self.dropped))
        inbox: dict[int, dict[int, bytes]] = {i: {} for i in self.survivors}
        replied = set()
        for i, message in self._accept(signatures, self.survivors).items():
            receivers = set(message.receiver_ids)
            if not receivers <= self.graph[i] & self.survivors or len(receivers) != len(message.receiver_ids):
                self._exclude(i, "sent consistency tags to clients that are not surviving neighbours")
                continue
            replied.add(i)
            for receiver, tag in zip(message.receiver_ids, message.tags):
                inbox[receiver][i] = tag
        self.signers = frozenset(replied)
        requests = {}
        for i in sorted(self.signers):
            senders = tuple(sorted(j for j in inbox[i] if j in self.signers))
            requests[i] = UnmaskRequest(self.round_id, i, survivors, dropped, senders,
                                        tuple(inbox[i][j] for j in senders))
        return requests

    def _dropped_to_unmask(self) -> list[int]:
        """Dropped sharers with a surviving neighbour: their pair masks are in the sum."""
        assert self.graph is not None
        return sorted(j for j in self.dropped if self.graph[j] & self.survivors)

    # ------------------------------------------------------------ stage 5: unmask and decode

    def collect_unmask_responses(self, responses: Iterable[UnmaskResponse]) -> AggregateResult:
        """Rebuild ``b_j`` of survivors and mask keys of the dropped, remove all masks, decode."""
        return self._stage(ServerState.UNMASK_REQUESTED, ServerState.DONE, lambda: self._unmask(responses))

    def _check_share(self, kind: str, owner: int, holder: int) -> None:
        """Refuse a share the server must not hold: never both kinds of one owner, only from neighbours."""
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

    def _hold_response(self, response: UnmaskResponse) -> None:
        """Open every share the response's keys unlock, or hold none of them (the responder is then excluded).

        The server opens the ciphertexts the owners sent it (kept since the share stage): a key that
        does not open its share is a lie by the responder, caught by itself.
        """
        holder = response.client_id
        pairs = [("self", o, k) for o, k in zip(response.self_mask_owners, response.self_mask_openers)]
        pairs += [("key", o, k) for o, k in zip(response.mask_key_owners, response.mask_key_openers)]
        try:
            opened = []
            for kind, owner, key in pairs:
                self._check_share(kind, owner, holder)
                sealed = self._sealed[(owner, holder)][0 if kind == "self" else 1]
                label = SEED_SHARE if kind == "self" else KEY_SHARE
                plain = open_once(key, sealed, share_associated_data(self.round_id, owner, holder, label))
                if plain is None:
                    raise SecAggIntegrityError(f"revealed a key that does not open its {kind} share of client {owner}")
                opened.append((kind, owner, share_from_bytes(plain)))
        except SecAggError as err:
            self._exclude(holder, str(err))
            return
        for kind, owner, share in opened:
            (self._self_shares if kind == "self" else self._key_shares)[owner][holder] = share
        for owner in response.unopened:
            if owner in self.graph[holder]:  # type: ignore[index]
                self._unopened.setdefault(owner, set()).add(holder)

    def _reconstruct(self, owner: int, shares: dict[int, int], t: int, valid: Callable[[bytes], bool],
                     what: str) -> bytes:
        """The secret from the first ``t`` opened shares, checked against the owner's commitment.

        Every share here opened under its holder's key, so it is what the owner dealt: when they do not
        rebuild the committed secret, the owner dealt garbage (a lying holder is caught before, alone).
        """
        if len(shares) < t:
            unopened = self._unopened.get(owner, set())
            guilty = len(unopened) > self.config.colluders  # more reports than colluders: one is honest
            raise SecAggAbort(f"unmasking: {len(shares)} of the t={t} shares of {what} arrived"
                              + (f"; {len(unopened)} neighbours could not open what it dealt" if unopened else ""),
                              culprits=(owner,) if guilty else ())
        holders = sorted(shares)
        basis = {h: shares[h] for h in holders[:t]}
        value = interpolate(basis)
        secret = value.to_bytes(SECRET_BYTES, "big") if value < 2 ** (8 * SECRET_BYTES) else None
        if secret is None or not valid(secret):
            raise SecAggAbort(f"unmasking: the shares client {owner} dealt do not rebuild {what}", culprits=(owner,))
        return secret

    def _unmask(self, responses: Iterable[UnmaskResponse]) -> AggregateResult:
        assert self.graph is not None and self._sum is not None
        self._unopened: dict[int, set[int]] = {}
        for response in self._accept(responses, self.signers).values():
            self._hold_response(response)
        t = self.graph.threshold
        length = self.config.masked_length
        total = self._sum
        for owner, shares in self._self_shares.items():
            expected = self._ads[owner].self_mask_commitment
            seed = self._reconstruct(owner, shares, t,
                                     lambda s, o=owner, e=expected: commitment(s, self.round_id, o) == e,
                                     f"client {owner}'s self-mask seed")
            add_signed(total, self_mask(seed, self.round_id, owner, length), -1)
        for owner, shares in self._key_shares.items():
            expected = self._ads[owner].mask_public_key
            raw = self._reconstruct(owner, shares, t, lambda s, e=expected: _x25519_public(s) == e,
                                    f"client {owner}'s mask key")
            private = private_key_from_bytes(raw)
            for survivor in sorted(self.graph[owner] & self.survivors):
                secret = agree(private, self._ads[survivor].mask_public_key)
                mask = pair_mask(secret, self.round_id, survivor, owner, length)
                add_signed(total, mask, -pair_sign(survivor, owner))
        weighted_sum, projected = bound_sum(decode(total, self.config), self.total_weight, len(self.survivors),
                                            self.config)
        result = AggregateResult(weighted_sum, self.total_weight, tuple(sorted(self.survivors)), projected)
        self._forget()
        return result


def valid_weight(weight: int, max_weight: int) -> bool:
    """A public weight: a power of two in ``[1, max_weight]`` (``wire.weight_bucket`` makes them)."""
    return isinstance(weight, int) and 1 <= weight <= max_weight and weight & (weight - 1) == 0


def _x25519_public(raw: bytes) -> bytes:
    try:
        return public_bytes(private_key_from_bytes(raw))
    except ValueError:
        return b""
