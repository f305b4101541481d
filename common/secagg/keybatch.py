"""Round keys committed in batches: one Ed25519 signature authenticates a shop's keys for many rounds.

Verifying every neighbour's signed advertisement costs an Ed25519 verification per neighbour per
round, about a tenth of a round's protocol compute. So a shop commits to the keys of its next
``2**depth`` SecAgg+ rounds of a run at once: from one random chain seed it derives each round's
secrets (X25519 share and mask keys, self-mask seed ``b``), hashes each round's advertisement
payload (run, round, id, both public keys, commitment: ``identity.advertisement_payload``) into
a leaf of a Merkle tree, and signs the root once, over (run, id, first round, depth, root). Each
round's advertisement carries its authentication path; a verifier checks the path (a few SHA-256
hashes) and the root's signature, which it verifies once per batch (:class:`SignatureCache`).

What each check still guarantees:

- The leaf binds the round, so an advertisement is valid for its own round only (no replay), and
  a substituted key changes the leaf, hence the root, and the signature fails.
- Secrets come from the chain seed (``os.urandom`` on deployed nodes) through HMAC-SHA256 with
  domain-separated labels; the chain is ratcheted one way as rounds are used, so the state a node
  keeps can no longer derive the secrets of a round it has advertised (forward secrecy within the
  batch). A round id below the batch's next unused round never reuses secrets: it gets a new batch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

from .errors import SecAggIntegrityError
from .identity import Identity, advertisement_payload, verify
from .primitives import KEY_BYTES, Randomness, commitment, context, private_key_from_bytes, public_bytes

HASH_BYTES = 32
MAX_BATCH_DEPTH = 6  # at most 64 rounds per signature
DEFAULT_BATCH_DEPTH = 4  # 16 rounds: a shop's training rounds 1..16 of a run take one signature
MAX_BATCHES = 4  # batches a keyring keeps (training, evaluation and statistics rounds use separate id ranges)
CACHE_ENTRIES = 4096  # verified signatures a keyring or server remembers


# ---------------------------------------------------------------- the Merkle tree (pure)


def leaf_hash(payload: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree over ``leaves`` (a power of two), leaves first, root last."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([_node(below[i], below[i + 1]) for i in range(0, len(below), 2)])
    return levels


def merkle_path(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    """The siblings from leaf ``index`` up to the root."""
    return tuple(level[(index >> height) ^ 1] for height, level in enumerate(levels[:-1]))


def root_from_path(leaf: bytes, index: int, path: tuple[bytes, ...]) -> bytes:
    node = leaf
    for height, sibling in enumerate(path):
        node = _node(sibling, node) if (index >> height) & 1 else _node(node, sibling)
    return node


def batch_payload(run_id: int, client_id: int, first_round: int, depth: int, root: bytes) -> bytes:
    """What a batch's signature covers: the root of the round advertisements ``first_round ..``."""
    return context(b"advertisement-batch", run_id, client_id, first_round, depth, root)


# ---------------------------------------------------------------- verification, with a cache


class SignatureCache:
    """Remembers (key, signature, payload) triples that verified; verifying one again costs a hash.

    Verification is deterministic, so a triple that verified once always does. Bounded: the
    oldest entries are forgotten first.
    """

    def __init__(self, entries: Iterable[bytes] = (), capacity: int = CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict((e, None) for e in entries)
        self.verifications = 0  # Ed25519 verifications actually run

    def verify(self, public_key: bytes, signature: bytes, payload: bytes, what: str) -> None:
        """:func:`identity.verify`, skipped for a triple that verified before."""
        entry = hashlib.sha256(public_key + signature + payload).digest()
        if entry in self._seen:
            self._seen.move_to_end(entry)
            return
        self.verifications += 1
        verify(public_key, signature, payload, what)
        self._seen[entry] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def entries(self) -> bytes:
        return b"".join(self._seen)

    @classmethod
    def from_entries(cls, raw: bytes) -> "SignatureCache":
        if len(raw) % HASH_BYTES:
            raise ValueError(f"a signature cache is a multiple of {HASH_BYTES} bytes, got {len(raw)}")
        return cls(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES))


@dataclass(frozen=True)
class BatchProof:
    """What authenticates one round's advertisement: the batch's first round, the path, the signature."""

    first_round: int
    path: tuple[bytes, ...]
    signature: bytes


def verify_advertisement(cache: SignatureCache, payload: bytes, run_id: int, round_id: int, client_id: int,
                         identity_key: bytes, proof: BatchProof, what: str) -> None:
    """Raise :class:`SecAggIntegrityError` unless the advertisement whose
    :func:`~.identity.advertisement_payload` is ``payload`` is in a batch ``identity_key`` signed."""
    index = round_id - proof.first_round
    depth = len(proof.path)
    if depth > MAX_BATCH_DEPTH or not 0 <= index < 2**depth:
        raise SecAggIntegrityError(f"{what}: round {round_id} is not in the signed batch (first round "
                                   f"{proof.first_round}, {2**depth} rounds)")
    root = root_from_path(leaf_hash(payload), index, proof.path)
    cache.verify(identity_key, proof.signature, batch_payload(run_id, client_id, proof.first_round, depth, root), what)


# ---------------------------------------------------------------- a shop's batches


@dataclass(frozen=True)
class RoundSecrets:
    """One round's secrets, as the client uses them."""

    share_private: bytes  # X25519, raw 32 bytes
    mask_private: bytes  # X25519, raw 32 bytes; Shamir-shared with the neighbours
    self_mask_seed: bytes  # b_i


def _derive(chain: bytes, label: bytes) -> bytes:
    return hmac.new(chain, context(b"key-batch", label), hashlib.sha256).digest()


def round_secrets(chain: bytes) -> RoundSecrets:
    return RoundSecrets(_derive(chain, b"share"), _derive(chain, b"mask"), _derive(chain, b"self-mask"))


def _ratchet(chain: bytes) -> bytes:
    return _derive(chain, b"ratchet")


def _round_payload(run_id: int, round_id: int, client_id: int, secrets: RoundSecrets) -> bytes:
    return advertisement_payload(run_id, round_id, client_id,
                                 public_bytes(private_key_from_bytes(secrets.share_private)),
                                 public_bytes(private_key_from_bytes(secrets.mask_private)),
                                 commitment(secrets.self_mask_seed, round_id, client_id))


class KeyBatch:
    """The committed keys of rounds ``first_round .. first_round + 2**depth - 1`` for one run and shop.

    Holds the leaves (public), the signature, and the chain value of the next unused round only.
    """

    def __init__(self, run_id: int, client_id: int, first_round: int, leaves: list[bytes], signature: bytes,
                 chain: bytes, next_round: int) -> None:
        self.run_id, self.client_id, self.first_round = run_id, client_id, first_round
        self.leaves, self.signature = list(leaves), signature
        self.depth = len(self.leaves).bit_length() - 1
        self.chain, self.next_round = chain, next_round

    @classmethod
    def create(cls, identity: Identity, run_id: int, client_id: int, first_round: int, depth: int,
               randomness: Randomness) -> "KeyBatch":
        """Derive ``2**depth`` rounds' keys from a fresh chain seed, commit to them, sign the root."""
        if not 0 <= depth <= MAX_BATCH_DEPTH:
            raise ValueError(f"batch depth must be in [0, {MAX_BATCH_DEPTH}], got {depth}")
        start = chain = randomness(KEY_BYTES)
        leaves = []
        for index in range(2**depth):
            leaves.append(leaf_hash(_round_payload(run_id, first_round + index, client_id, round_secrets(chain))))
            chain = _ratchet(chain)
        root = merkle_levels(leaves)[-1][0]
        signature = identity.sign(batch_payload(run_id, client_id, first_round, depth, root))
        return cls(run_id, client_id, first_round, leaves, signature, start, first_round)

    def covers(self, run_id: int, client_id: int, round_id: int) -> bool:
        return ((run_id, client_id) == (self.run_id, self.client_id)
                and self.next_round <= round_id < self.first_round + len(self.leaves))

    def take(self, round_id: int) -> tuple[RoundSecrets, BatchProof]:
        """Round ``round_id``'s secrets and proof; the chain moves past it, so they cannot be derived again."""
        if not self.covers(self.run_id, self.client_id, round_id):
            raise ValueError(f"round {round_id} is not an unused round of this batch")
        chain = self.chain
        for _ in range(round_id - self.next_round):
            chain = _ratchet(chain)
        self.chain, self.next_round = _ratchet(chain), round_id + 1
        index = round_id - self.first_round
        return round_secrets(chain), BatchProof(self.first_round, merkle_path(merkle_levels(self.leaves), index),
                                                self.signature)

    def to_state(self) -> dict:
        return {"run_id": self.run_id, "client_id": self.client_id, "first_round": self.first_round,
                "leaves": b"".join(self.leaves), "signature": self.signature, "chain": self.chain,
                "next_round": self.next_round}

    @classmethod
    def from_state(cls, state: dict) -> "KeyBatch":
        raw = bytes(state["leaves"])
        leaves = [raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]
        return cls(int(state["run_id"]), int(state["client_id"]), int(state["first_round"]), leaves,
                   bytes(state["signature"]), bytes(state["chain"]), int(state["next_round"]))


class Keyring:
    """A shop's key batches and the signatures it has verified, kept across rounds (node-local state).

    ``depth``: each new batch covers ``2**depth`` rounds; 0 signs every round on its own (a client
    that takes part in one round only).
    """

    def __init__(self, depth: int = DEFAULT_BATCH_DEPTH, batches: Iterable[KeyBatch] = (),
                 verified: SignatureCache | None = None) -> None:
        if not 0 <= depth <= MAX_BATCH_DEPTH:
            raise ValueError(f"batch depth must be in [0, {MAX_BATCH_DEPTH}], got {depth}")
        self.depth = depth
        self.batches = list(batches)
        self.verified = verified if verified is not None else SignatureCache()

    def round_keys(self, identity: Identity, run_id: int, round_id: int, client_id: int,
                   randomness: Randomness) -> tuple[RoundSecrets, BatchProof]:
        batch = next((b for b in self.batches if b.covers(run_id, client_id, round_id)), None)
        if batch is None:
            batch = KeyBatch.create(identity, run_id, client_id, round_id, self.depth, randomness)
            self.batches = [b for b in self.batches if b.run_id == run_id][-(MAX_BATCHES - 1):] + [batch]
        return batch.take(round_id)

    def to_state(self) -> dict:
        state: dict = {"depth": self.depth, "batches": len(self.batches), "verified": self.verified.entries()}
        for k, batch in enumerate(self.batches):
            state.update({f"batch{k}.{key}": value for key, value in batch.to_state().items()})
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Keyring":
        batches = [KeyBatch.from_state({key.split(".", 1)[1]: value for key, value in state.items()
                                        if key.startswith(f"batch{k}.")}) for k in range(int(state["batches"]))]
        return cls(int(state["depth"]), batches, SignatureCache.from_entries(bytes(state["verified"])))
