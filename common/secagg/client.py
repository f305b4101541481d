"""The client side of a SecAgg+ round: a state machine with one method per stage.

Each method checks that the server's message belongs to this round and this client and is
consistent with what was agreed before. A message for another round or another client is refused
and leaves the state as it was (a stale message); any other error stops the client for good
(state ``FAILED``): it never answers a later stage of a round it has refused.

Against a malicious server: the round's parameters must meet the shop's own floors
(:class:`~common.secagg.policy.SecAggPolicy`), with the colluders planned from the shop's pinned
roster, so no round the server assembles lets them reach the threshold; every neighbour's
advertisement must be signed by
an identity key on the shop's pinned roster (one signature per batch of rounds, checked once per
batch: :mod:`.keybatch`); the graph seed is recomputed from the members'
advertisement digests; the client authenticates one survivor set per round to its neighbours
(an HMAC under each pairwise key, over the set and the digest of what the round is about) and
reveals share keys only for that set, with valid tags of at least ``t`` neighbours over it.

Against a malicious shop: a neighbour's share that does not open is not held (and said so at
unmasking) instead of failing this client, so one shop cannot knock out its neighbours; the shares
this client holds are revealed as the keys that seal them, so a lie is caught by the server alone.
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Callable, TypeVar

import numpy as np

from .config import SecAggConfig
from .errors import SecAggAbort, SecAggIntegrityError, SecAggProtocolError, ShareKindViolation
from .graph import neighbour_graph
from .identity import (
    NO_SUBJECT, Identity, Roster, advertisement_digest, advertisement_payload, consistency_tag, graph_seed,
    survivors_payload,
)
from .keybatch import Keyring, verify_advertisement
from .masks import (
    KEY_SHARE, SEED_SHARE, add_signed, pair_mask, pair_sign, self_mask, share_associated_data, share_key,
)
from .messages import (
    ConsistencyRequest, ConsistencySignature, KeyAdvertisement, KeyBroadcast, MaskedInput, RoundSetup,
    ShareDistribution, ShareRelay, UnmaskRequest, UnmaskResponse,
)
from .policy import SecAggPolicy
from .primitives import (
    MAX_ID, Randomness, agree, commitment, default_randomness, derive_key, open_once, private_key_from_bytes,
    public_bytes, seal_once,
)
from .quantize import quantize
from .shamir import share_from_bytes, share_to_bytes, split

T = TypeVar("T")


def _is_share(raw: bytes) -> bool:
    try:
        share_from_bytes(raw)
    except SecAggIntegrityError:
        return False
    return True

class ClientState(Enum):
    """Where a client is in its round; each stage method moves it one step."""

    NEW = "new"
    KEYS_ADVERTISED = "keys advertised"
    SHARES_SENT = "shares sent"
    INPUT_SENT = "masked input sent"
    SIGNED = "survivor set signed"
    DONE = "done"
    FAILED = "failed"


class SecAggClient:
    """One client in one round: ``advertise_keys → share_keys → mask_input → sign_survivors → unmask``.

    ``identity`` signs this shop's advertisement and survivor set; ``roster`` is the federation's
    roster the shop pinned; ``policy`` its floors for the server's parameters; ``run_id`` the run
    the client expects (``None``: take the setup's). ``randomness`` supplies every random byte
    (keys, self-mask seed, Shamir coefficients, nonces, stochastic rounding); inject
    :class:`~common.secagg.primitives.SeededRandomness` for reproducible simulations only.
    ``keyring``: the shop's key batches and verified signatures, kept between rounds by the caller
    (:mod:`.keybatch`: one signature per batch of rounds); ``None``: a batch of this round alone.
    """

    def __init__(self, client_id: int, identity: Identity, roster: Roster, policy: SecAggPolicy = SecAggPolicy(),
                 run_id: int | None = None, randomness: Randomness = default_randomness,
                 keyring: Keyring | None = None) -> None:
        if not 0 <= client_id <= MAX_ID:
            raise ValueError(f"client_id must be in [0, 2**64), got {client_id}")
        if identity.public_key not in roster:
            raise SecAggIntegrityError("this shop's identity key is not on its own roster; refusing to take part")
        self.client_id = client_id
        self.identity, self.roster, self.policy = identity, roster, policy
        self.run_id = run_id
        self._random = randomness
        self.keyring = keyring if keyring is not None else Keyring(depth=0)
        self.state = ClientState.NEW

    # ------------------------------------------------------------ persistence between stages

    def to_state(self) -> dict:
        """Everything needed to continue the round in another process (secrets included).

        The state stays on the client's node (Flower's node-local ``context.state``); it is never
        part of a message.
        """
        state: dict = {"client_id": self.client_id, "state": self.state.value}
        if self.state in (ClientState.NEW, ClientState.FAILED, ClientState.DONE):
            return state
        state.update(
            round_id=self.round_id,
            run_id=self.run_id,
            participants=sorted(self._participants),
            share_private=self._share_private.private_bytes_raw(),
            mask_private=self._mask_private_raw,
            self_mask_seed=self._self_mask_seed,
            subject=self._subject,
            **{f"config.{k}": (0 if v is None else v) for k, v in self.config.to_dict().items()},
        )
        if self.state in (ClientState.SHARES_SENT, ClientState.INPUT_SENT, ClientState.SIGNED):
            ids = sorted(self._neighbours)
            state.update(
                threshold=self._threshold,
                members_digest=self._members_digest,
                neighbours=ids,
                share_keys=[self._share_keys[i] for i in ids],
                mask_keys=[self._mask_keys[i] for i in ids],
                pair_keys=[self._pair_keys[i] for i in ids],
            )
        if self.state is ClientState.SIGNED:
            state.update(signed_survivors=sorted(self._signed[0]), signed_dropped=sorted(self._signed[1]))
        if self.state in (ClientState.INPUT_SENT, ClientState.SIGNED):
            held = sorted(self._held)
            state.update(
                held=held,
                held_self=[self._held[i][0] for i in held],
                held_key=[self._held[i][1] for i in held],
            )
        return state

    @classmethod
    def from_state(cls, state: dict, identity: Identity, roster: Roster, policy: SecAggPolicy = SecAggPolicy(),
                   randomness: Randomness = default_randomness, keyring: Keyring | None = None) -> "SecAggClient":
        """The client ``to_state`` described, ready for its next stage (the keyring is kept apart)."""
        client = cls(int(state["client_id"]), identity, roster, policy, None, randomness, keyring)
        client.state = ClientState(state["state"])
        if "round_id" not in state:
            return client
        fields = {k[len("config."):]: v for k, v in state.items() if k.startswith("config.")}
        fields["degree"] = fields.get("degree") or None
        fields["norm_bound"] = fields.get("norm_bound") or None
        client.config = SecAggConfig(**fields)
        client.round_id = int(state["round_id"])
        client.run_id = int(state["run_id"])
        client._participants = frozenset(int(i) for i in state["participants"])
        client._share_private = private_key_from_bytes(bytes(state["share_private"]))
        client._mask_private_raw = bytes(state["mask_private"])
        client._mask_private = private_key_from_bytes(client._mask_private_raw)
        client._self_mask_seed = bytes(state["self_mask_seed"])
        client._subject = bytes(state["subject"])
        if "neighbours" in state:
            ids = [int(i) for i in state["neighbours"]]
            client._threshold = int(state["threshold"])
            client._neighbours = frozenset(ids)
            client._members_digest = bytes(state["members_digest"])
            client._share_keys = dict(zip(ids, map(bytes, state["share_keys"])))
            client._mask_keys = dict(zip(ids, map(bytes, state["mask_keys"])))
            client._pair_keys = dict(zip(ids, map(bytes, state["pair_keys"])))
        if "signed_survivors" in state:
            client._signed = (frozenset(int(i) for i in state["signed_survivors"]),
                              frozenset(int(i) for i in state["signed_dropped"]))
        if "held" in state:
            client._held = {int(i): (bytes(a), bytes(b))
                            for i, a, b in zip(state["held"], state["held_self"], state["held_key"])}
        return client

    # ------------------------------------------------------------ stage plumbing

    def _enter(self, expected: ClientState, message: object, round_id: int | None) -> None:
        if self.state is not expected:
            raise SecAggProtocolError(
                f"client {self.client_id} got {type(message).__name__} in state '{self.state.value}', "
                f"expected state '{expected.value}'"
            )
        if round_id is not None and getattr(message, "round_id") != round_id:
            raise SecAggProtocolError(
                f"{type(message).__name__} is for round {getattr(message, 'round_id')}, this is round {round_id}"
            )
        if not isinstance(message, RoundSetup) and getattr(message, "client_id") != self.client_id:
            raise SecAggProtocolError(
                f"{type(message).__name__} is addressed to client {getattr(message, 'client_id')}, "
                f"not {self.client_id}"
            )

    def _run(
        self, expected: ClientState, message: object, round_id: int | None, step: Callable[[], T], after: ClientState
    ) -> T:
        self._enter(expected, message, round_id)
        try:
            reply = step()
        except Exception:
            self.state = ClientState.FAILED
            raise
        self.state = after
        return reply

    # ------------------------------------------------------------ stage 1

    def advertise_keys(self, setup: RoundSetup, subject: bytes = NO_SUBJECT) -> KeyAdvertisement:
        """Check the round parameters, make this round's two key pairs and self-mask seed.

        ``subject``: the 32-byte digest of what this round is about as this shop received it (the
        adapter, the statistics request); survivors vouch for it, so all must have the same.
        """
        if not isinstance(subject, bytes) or len(subject) != len(NO_SUBJECT):
            raise ValueError(f"subject must be a {len(NO_SUBJECT)}-byte digest")
        return self._run(ClientState.NEW, setup, None, lambda: self._advertise(setup, subject),
                         ClientState.KEYS_ADVERTISED)

    def _advertise(self, setup: RoundSetup, subject: bytes) -> KeyAdvertisement:
        if self.run_id is not None and setup.run_id != self.run_id:
            raise SecAggProtocolError(f"the setup is for run {setup.run_id}, this is run {self.run_id}")
        self.policy.check_config(setup.config, len(self.roster))
        if len(setup.participants) > len(self.roster):
            raise SecAggProtocolError(f"{len(setup.participants)} participants, but the roster lists only "
                                      f"{len(self.roster)} shops")
        if self.client_id not in setup.participants:
            raise SecAggProtocolError(f"client {self.client_id} is not among the round's participants")
        if len(setup.participants) > setup.config.max_clients:
            raise SecAggProtocolError(
                f"{len(setup.participants)} participants exceed max_clients={setup.config.max_clients}"
            )
        self.policy.check_members(len(setup.participants), setup.config)
        self.config = setup.config
        self._subject = subject
        self.round_id, self.run_id = setup.round_id, setup.run_id
        self._participants = frozenset(setup.participants)
        secrets, proof = self.keyring.round_keys(self.identity, self.run_id, self.round_id, self.client_id,
                                                 self._random)
        self._share_private = private_key_from_bytes(secrets.share_private)
        self._mask_private_raw = secrets.mask_private
        self._mask_private = private_key_from_bytes(self._mask_private_raw)
        self._self_mask_seed = secrets.self_mask_seed
        keys = (public_bytes(self._share_private), public_bytes(self._mask_private),
                commitment(self._self_mask_seed, self.round_id, self.client_id))
        return KeyAdvertisement(self.round_id, self.client_id, *keys, self.identity.public_key, proof.signature,
                                proof.first_round, proof.path)

    # ------------------------------------------------------------ stage 2

    def share_keys(self, broadcast: KeyBroadcast) -> ShareDistribution:
        """Verify the neighbourhood against the seed, Shamir-share ``b_i`` and the mask key, seal the shares."""
        return self._run(
            ClientState.KEYS_ADVERTISED, broadcast, self.round_id, lambda: self._share(broadcast),
            ClientState.SHARES_SENT,
        )

    def _share(self, broadcast: KeyBroadcast) -> ShareDistribution:
        members = set(broadcast.members)
        if not members <= self._participants or self.client_id not in members:
            raise SecAggProtocolError("graph members must be participants and include this client")
        if len(members) < self.config.min_clients:
            raise SecAggAbort(f"only {len(members)} clients advertised keys, min_clients={self.config.min_clients}")
        digests = dict(zip(broadcast.members, broadcast.member_digests))
        own_keys = (public_bytes(self._share_private), public_bytes(self._mask_private),
                    commitment(self._self_mask_seed, self.round_id, self.client_id))
        own = advertisement_payload(self.run_id, self.round_id, self.client_id, *own_keys)
        if digests[self.client_id] != advertisement_digest(own, self.identity.public_key):
            raise SecAggIntegrityError("the member list does not carry this shop's own advertisement")
        identities = {self.identity.public_key}
        for k, neighbour in enumerate(broadcast.neighbour_ids):
            share_pk, mask_pk, commit, identity = (
                broadcast.share_public_keys[k], broadcast.mask_public_keys[k], broadcast.commitments[k],
                broadcast.identity_keys[k])
            if identity not in self.roster:
                raise SecAggIntegrityError(f"neighbour {neighbour} signs with a key that is not on the roster")
            if identity in identities:
                raise SecAggIntegrityError(f"neighbour {neighbour} uses an identity key another member uses")
            identities.add(identity)
            payload = advertisement_payload(self.run_id, self.round_id, neighbour, share_pk, mask_pk, commit)
            verify_advertisement(self.keyring.verified, payload, self.run_id, self.round_id, neighbour, identity,
                                 broadcast.proof(k), f"advertisement of neighbour {neighbour}")
            if digests.get(neighbour) != advertisement_digest(payload, identity):
                raise SecAggIntegrityError(f"the member list carries another advertisement for neighbour {neighbour}")
        self._members_digest = graph_seed(self.run_id, self.round_id, digests)
        try:
            graph = neighbour_graph(broadcast.members, self._members_digest, self.config.degree,
                                    self.config.colluders, self.config.dropout_fraction)
        except ValueError as err:
            raise SecAggProtocolError(f"the round's parameters give no usable graph: {err}") from None
        self.policy.check_graph(graph, len(self.roster))
        if set(broadcast.neighbour_ids) != graph[self.client_id] or len(broadcast.neighbour_ids) != graph.degree:
            raise SecAggProtocolError("neighbour list does not match the graph derived from the advertisements")
        keys = [*broadcast.share_public_keys, *broadcast.mask_public_keys]
        if len(set(keys) | set(own_keys[:2])) != len(keys) + 2:
            raise SecAggIntegrityError("advertised public keys are not all distinct")
        self._threshold = graph.threshold
        self._neighbours = graph[self.client_id]
        self._share_keys = dict(zip(broadcast.neighbour_ids, broadcast.share_public_keys))
        self._mask_keys = dict(zip(broadcast.neighbour_ids, broadcast.mask_public_keys))
        receivers = tuple(broadcast.neighbour_ids)
        shares = {SEED_SHARE: split(self._self_mask_seed, receivers, self._threshold, self._random),
                  KEY_SHARE: split(self._mask_private_raw, receivers, self._threshold, self._random)}
        sealed: dict[bytes, list[bytes]] = {SEED_SHARE: [], KEY_SHARE: []}
        self._pair_keys = {}
        for receiver in receivers:
            secret = agree(self._share_private, self._share_keys[receiver])
            low, high = sorted((self.client_id, receiver))
            self._pair_keys[receiver] = derive_key(secret, b"consistency", self.round_id, low, high)
            for kind, kind_shares in shares.items():
                key = share_key(secret, self.round_id, self.client_id, receiver, kind)
                associated = share_associated_data(self.round_id, self.client_id, receiver, kind)
                sealed[kind].append(seal_once(key, share_to_bytes(kind_shares[receiver]), associated))
        return ShareDistribution(self.round_id, self.client_id, receivers, tuple(sealed[SEED_SHARE]),
                                 tuple(sealed[KEY_SHARE]))

    # ------------------------------------------------------------ stage 3

    def mask_input(self, relay: ShareRelay, update: np.ndarray, weight: int = 1) -> MaskedInput:
        """Check the relayed shares open, then send ``encode(weight·update)`` under all masks and ``weight``."""
        return self._run(
            ClientState.SHARES_SENT, relay, self.round_id, lambda: self._mask(relay, update, weight),
            ClientState.INPUT_SENT,
        )

    def _mask(self, relay: ShareRelay, update: np.ndarray, weight: int) -> MaskedInput:
        if not isinstance(weight, (int, np.integer)) or weight < 1:
            raise ValueError(f"weight must be an int >= 1 (the server checks every survivor sent one), got {weight!r}")
        senders = relay.sender_ids
        if not set(senders) <= self._neighbours:
            raise SecAggProtocolError("relayed shares come from clients that are not neighbours")
        if len(senders) < self._threshold:
            raise SecAggAbort(
                f"client {self.client_id} has {len(senders)} live neighbours, fewer than the threshold "
                f"{self._threshold}"
            )
        # Hold each neighbour's two sealed shares as relayed; at unmasking this client opens the one it is
        # asked for and reveals its key. A share that does not open then (a neighbour that sealed garbage,
        # or a server that altered it) is reported, not revealed: the pair masks depend on the signed mask
        # keys only, so this client goes on either way.
        self._held: dict[int, tuple[bytes, bytes]] = {
            sender: (seed_share, key_share)
            for sender, seed_share, key_share in zip(senders, relay.seed_shares, relay.key_shares)}
        length = self.config.masked_length
        masked = quantize(update, weight, self.config, self._random)
        add_signed(masked, self_mask(self._self_mask_seed, self.round_id, self.client_id, length), +1)
        for other in senders:
            secret = agree(self._mask_private, self._mask_keys[other])
            add_signed(masked, pair_mask(secret, self.round_id, self.client_id, other, length),
                       pair_sign(self.client_id, other))
        return MaskedInput(self.round_id, self.client_id, int(weight), masked)

    # ------------------------------------------------------------ stage 4

    def sign_survivors(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Check the survivor set, remember it, and sign it: the only set this client will unmask for."""
        return self._run(ClientState.INPUT_SENT, request, self.round_id, lambda: self._sign(request),
                         ClientState.SIGNED)

    def _sign(self, request: ConsistencyRequest) -> ConsistencySignature:
        survivors, dropped = self._check_sets(request.survivors, request.dropped)
        self._signed = (frozenset(survivors), frozenset(dropped))
        payload = survivors_payload(self.run_id, self.round_id, survivors, dropped, self._members_digest,
                                    self._subject)
        receivers = tuple(sorted(self._neighbours & survivors))
        tags = tuple(consistency_tag(self._pair_keys[j], payload) for j in receivers)
        return ConsistencySignature(self.round_id, self.client_id, receivers, tags)

    def _check_sets(self, survivors_: tuple[int, ...], dropped_: tuple[int, ...]) -> tuple[set[int], set[int]]:
        survivors, dropped = set(survivors_), set(dropped_)
        both = survivors & dropped
        if both:
            raise ShareKindViolation(
                f"refusing to reveal both share kinds of client(s) {sorted(both)}: that would unmask their input"
            )
        if self.client_id not in survivors:
            raise SecAggProtocolError(f"client {self.client_id} sent its input but is not listed as a survivor")
        if not survivors <= self._participants or not dropped <= self._participants:
            raise SecAggProtocolError("unmask request names clients outside the round")
        if len(survivors) < self.config.min_clients:
            raise SecAggAbort(f"only {len(survivors)} survivors, min_clients={self.config.min_clients}")
        unlisted = set(self._held) - survivors - dropped
        if unlisted:
            raise SecAggProtocolError(f"neighbours {sorted(unlisted)} are neither survivors nor dropped")
        return survivors, dropped

    # ------------------------------------------------------------ stage 5

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal the key of one sealed share kind per neighbour: ``b``'s for survivors, the mask key's for
        the dropped (the server opens the ciphertexts it relayed; it never gets a share it cannot check).

        Only for the survivor set this client authenticated, and only with valid tags of at least
        ``t`` surviving neighbours over that same set (Bonawitz et al.'s consistency check). Refuses
        (:class:`ShareKindViolation`) a request that lists one client as both survivor and dropped,
        and answers at most one unmask request per round.
        """
        return self._run(ClientState.SIGNED, request, self.round_id, lambda: self._unmask(request),
                         ClientState.DONE)

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        survivors, dropped = self._check_sets(request.survivors, request.dropped)
        if (survivors, dropped) != (set(self._signed[0]), set(self._signed[1])):
            changed = sorted((survivors ^ self._signed[0]) | (dropped ^ self._signed[1]))
            raise ShareKindViolation(
                f"the unmask request's survivor set differs from the one this client signed (client(s) {changed}); "
                "refusing to reveal any share")
        payload = survivors_payload(self.run_id, self.round_id, survivors, dropped, self._members_digest,
                                    self._subject)
        valid = {signer for signer, tag in zip(request.signer_ids, request.tags)  # a wrong tag counts for nothing
                 if signer in self._neighbours and signer in survivors
                 and hmac.compare_digest(tag, consistency_tag(self._pair_keys[signer], payload))}
        if len(valid) < self._threshold:
            raise SecAggIntegrityError(
                f"only {len(valid)} of this client's neighbours vouched for the survivor set, fewer than "
                f"t={self._threshold}")
        openers: dict[bytes, dict[int, bytes]] = {SEED_SHARE: {}, KEY_SHARE: {}}
        unopened = []
        for owner in sorted(set(self._held) & (survivors | dropped)):
            kind = SEED_SHARE if owner in survivors else KEY_SHARE
            key = self.opener(owner, kind)
            if key is None:
                unopened.append(owner)
            else:
                openers[kind][owner] = key
        response = UnmaskResponse(
            self.round_id, self.client_id,
            tuple(openers[SEED_SHARE]), tuple(openers[SEED_SHARE].values()),
            tuple(openers[KEY_SHARE]), tuple(openers[KEY_SHARE].values()),
            tuple(unopened),
        )
        self._held = {}
        return response

    def opener(self, owner: int, kind: bytes) -> bytes | None:
        """The key that opens the ``kind`` share ``owner`` sealed for this client, or None if it does not open.

        The key is used for that one share only: revealing it (the unmask response) opens nothing else.
        """
        sealed = self._held[owner][0 if kind == SEED_SHARE else 1]
        key = share_key(agree(self._share_private, self._share_keys[owner]), self.round_id, owner, self.client_id,
                        kind)
        plain = open_once(key, sealed, share_associated_data(self.round_id, owner, self.client_id, kind))
        return key if plain is not None and _is_share(plain) else None

