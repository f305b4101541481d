"""Everything that crosses the wire in a SecAgg+ round, in both directions — and nothing else.

A round has four stages; in each the server sends one message to every live client and each
client answers with one message (Bell et al. 2020, semi-honest server, AEAD on shares)::

    stage            server -> client      client -> server
    ADVERTISE_KEYS   RoundSetup            KeyAdvertisement      two X25519 keys + commitment, signed (batch)
    SHARE_KEYS       KeyBroadcast          ShareDistribution     two AES-GCM sealed Shamir shares per neighbour
    MASKED_INPUT     ShareRelay            MaskedInput           y_i in Z_2^32, 4 bytes per element; public weight
    CONSISTENCY      ConsistencyRequest    ConsistencySignature  one HMAC of the survivor set per neighbour
    UNMASK           UnmaskRequest         UnmaskResponse        the key of one sealed share kind per client id

Advertisements are signed with the shop's long-term identity key (``identity``), one signature
over a Merkle root for a batch of rounds (``keybatch``), and checked against the roster the shop
pins; the graph seed is the hash of all signed advertisements, so the server cannot choose it;
survivors authenticate the survivor set (and the digest of what the round is about: the adapter
or the statistics request) to each neighbour (an HMAC under their pairwise key) before any share
is revealed. Each share is sealed on its own, under a key used for it alone; at unmasking a
neighbour reveals that key, and the server opens the ciphertext it relayed: a neighbour that lies
reveals a key that opens nothing, and is caught alone.

Each message is a frozen dataclass with ``to_record()`` / ``from_record()`` mapping it to a flat
``{str: bytes | int | float | list[int] | numpy.uint32 array}`` (what a Flower ``ConfigRecord`` or
``ArrayRecord`` can carry). ``from_record`` checks every key, type and length and raises
:class:`SecAggProtocolError` on anything else. Inside each sealed share is one Shamir share
(``SHARE_BYTES``); the server opens it only with the key its holder reveals at unmasking.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate
from typing import Any, ClassVar, Union

import numpy as np

from .config import SecAggConfig
from .errors import SecAggConfigError, SecAggProtocolError
from .identity import CONSISTENCY_TAG_BYTES, SIGNATURE_BYTES
from .keybatch import HASH_BYTES, MAX_BATCH_DEPTH, BatchProof
from .primitives import KEY_BYTES, MAX_ID, TAG_BYTES
from .shamir import SHARE_BYTES

RecordValue = Union[bytes, int, float, list, np.ndarray]
Record = dict[str, RecordValue]

MESSAGE_KEY = "message"  # every record carries its message code under this key


class Stage(IntEnum):
    """The four request/response stages of a round, in order."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5


# ---------------------------------------------------------------- field readers (validate as they read)


def _fail(cls: type, message: str) -> SecAggProtocolError:
    return SecAggProtocolError(f"{cls.__name__}: {message}")


def _check_keys(cls: type, record: Record, keys: tuple[str, ...]) -> None:
    code = record.get(MESSAGE_KEY)
    if type(code) is not int or code != cls.CODE:  # type: ignore[attr-defined]
        raise _fail(cls, f"record is a message of code {code!r}, not {cls.CODE}")  # type: ignore[attr-defined]
    expected = {MESSAGE_KEY, *keys}
    if set(record) != expected:
        raise _fail(cls, f"record keys {sorted(record)} differ from the declared {sorted(expected)}")


def _id(cls: type, record: Record, key: str) -> int:
    value = record[key]
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise _fail(cls, f"{key} must be an int in [0, 2**64), got {value!r}")
    return value


def _ids(cls: type, record: Record, key: str) -> tuple[int, ...]:
    value = record[key]
    if not isinstance(value, list) or any(type(v) is not int or not 0 <= v <= MAX_ID for v in value):
        raise _fail(cls, f"{key} must be a list of ints in [0, 2**64)")
    if len(set(value)) != len(value):
        raise _fail(cls, f"{key} contains duplicate ids")
    return tuple(value)


def _bytes(cls: type, record: Record, key: str, length: int) -> bytes:
    value = record[key]
    if not isinstance(value, bytes) or len(value) != length:
        raise _fail(cls, f"{key} must be {length} bytes")
    return value


def _blob(cls: type, record: Record, key: str, item_bytes: int, count: int) -> tuple[bytes, ...]:
    value = record[key]
    if not isinstance(value, bytes) or len(value) != item_bytes * count:
        raise _fail(cls, f"{key} must be {count} items of {item_bytes} bytes")
    return tuple(value[i * item_bytes : (i + 1) * item_bytes] for i in range(count))


def _join(items: tuple[bytes, ...], item_bytes: int, cls: type, name: str) -> bytes:
    if any(len(item) != item_bytes for item in items):
        raise _fail(cls, f"every item of {name} must be {item_bytes} bytes")
    return b"".join(items)


def _ints(cls: type, record: Record, key: str, high: int = MAX_ID) -> tuple[int, ...]:
    value = record[key]
    if not isinstance(value, list) or any(type(v) is not int or not 0 <= v <= high for v in value):
        raise _fail(cls, f"{key} must be a list of ints in [0, {high}]")
    return tuple(value)


def _path(cls: type, value: RecordValue, name: str) -> tuple[bytes, ...]:
    """A Merkle path: whole hashes, at most ``MAX_BATCH_DEPTH`` of them."""
    if not isinstance(value, bytes) or len(value) % HASH_BYTES or len(value) > MAX_BATCH_DEPTH * HASH_BYTES:
        raise _fail(cls, f"{name} must be at most {MAX_BATCH_DEPTH} hashes of {HASH_BYTES} bytes")
    return tuple(value[i : i + HASH_BYTES] for i in range(0, len(value), HASH_BYTES))


def _paths(cls: type, record: Record, depths: tuple[int, ...]) -> tuple[tuple[bytes, ...], ...]:
    """``batch_paths``: the neighbours' Merkle paths back to back, ``depths[k]`` hashes for neighbour k."""
    value = record["batch_paths"]
    if not isinstance(value, bytes) or len(value) != HASH_BYTES * sum(depths):
        raise _fail(cls, f"batch_paths must hold {sum(depths)} hashes of {HASH_BYTES} bytes (batch_depths)")
    hashes = [value[i : i + HASH_BYTES] for i in range(0, len(value), HASH_BYTES)]
    return tuple(tuple(hashes[end - depth : end]) for end, depth in zip(accumulate(depths), depths))


def _path_bytes(cls: type, path: tuple[bytes, ...]) -> bytes:
    if len(path) > MAX_BATCH_DEPTH:
        raise _fail(cls, f"a batch path has at most {MAX_BATCH_DEPTH} hashes")
    return _join(path, HASH_BYTES, cls, "batch path")


def _same_length(cls: type, *pairs: tuple[str, tuple]) -> None:
    lengths = {name: len(items) for name, items in pairs}
    if len(set(lengths.values())) != 1:
        raise _fail(cls, f"lengths differ: {lengths}")


# ---------------------------------------------------------------- a sealed share

SEALED_SHARE_BYTES = SHARE_BYTES + TAG_BYTES  # one Shamir share under AES-GCM (its key is used once)
OPENER_BYTES = KEY_BYTES  # the key that opens one sealed share, revealed at unmasking


# ---------------------------------------------------------------- stage 1: ADVERTISE_KEYS

_CONFIG_FIELDS = ("vector_length", "max_clients", "clip", "max_weight", "frac_bits", "degree", "min_clients",
                  "colluders", "dropout_fraction", "norm_bound")
_FLOAT_FIELDS = ("clip", "dropout_fraction", "norm_bound")


@dataclass(frozen=True)
class RoundSetup:
    """Server -> every participant: the run and round, who takes part, the parameters.

    There is no graph seed here: it is derived from the signed advertisements (``graph_seed``).
    """

    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    SENDER: ClassVar[str] = "server"
    CODE: ClassVar[int] = 10
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "run_id", "participants") + tuple(
        f"config.{name}" for name in _CONFIG_FIELDS
    )

    round_id: int
    run_id: int  # the Flower run; signatures bind it, so nothing carries over between runs
    participants: tuple[int, ...]
    config: SecAggConfig

    def to_record(self) -> Record:
        c = self.config
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "run_id": self.run_id,
            "participants": list(self.participants),
            "config.vector_length": c.vector_length,
            "config.max_clients": c.max_clients,
            "config.clip": c.clip,
            "config.max_weight": c.max_weight,
            "config.frac_bits": c.frac_bits,  # always resolved
            "config.degree": 0 if c.degree is None else c.degree,  # 0 = automatic
            "config.min_clients": c.min_clients,
            "config.colluders": c.colluders,
            "config.dropout_fraction": c.dropout_fraction,
            "config.norm_bound": 0.0 if c.norm_bound is None else c.norm_bound,  # 0 = no L2 bound
        }

    @classmethod
    def from_record(cls, record: Record) -> "RoundSetup":
        _check_keys(cls, record, cls.KEYS)
        values: dict[str, Any] = {name: record[f"config.{name}"] for name in _CONFIG_FIELDS}
        for name in _FLOAT_FIELDS:
            if not isinstance(values[name], float):
                raise _fail(cls, f"config.{name} must be a float")
        for name in _CONFIG_FIELDS:
            if name not in _FLOAT_FIELDS and type(values[name]) is not int:
                raise _fail(cls, f"config.{name} must be an int")
        values["degree"] = values["degree"] or None
        values["norm_bound"] = values["norm_bound"] or None
        try:
            config = SecAggConfig(**values)
        except SecAggConfigError as err:
            raise _fail(cls, f"invalid parameters: {err}") from err
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "run_id"),
            _ids(cls, record, "participants"),
            config,
        )


@dataclass(frozen=True)
class KeyAdvertisement:
    """Client -> server: fresh X25519 public keys and a commitment to ``b_i``, signed by the shop."""

    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    SENDER: ClassVar[str] = "client"
    CODE: ClassVar[int] = 11
    KEYS: ClassVar[tuple[str, ...]] = (
        "round_id", "client_id", "share_public_key", "mask_public_key", "self_mask_commitment", "identity_key",
        "signature", "batch_first_round", "batch_path",
    )

    round_id: int
    client_id: int
    share_public_key: bytes  # c_i^PK: encrypts shares
    mask_public_key: bytes  # s_i^PK: agrees pairwise mask seeds
    self_mask_commitment: bytes  # SHA-256 commitment to b_i, checked after reconstruction
    identity_key: bytes  # the shop's Ed25519 public key, as listed in the roster
    signature: bytes  # Ed25519 over keybatch.batch_payload(run, id, first round, depth, root)
    batch_first_round: int  # the signed batch covers rounds batch_first_round .. + 2**depth - 1
    batch_path: tuple[bytes, ...]  # Merkle path (depth hashes) from this round's payload to the root

    @property
    def proof(self) -> BatchProof:
        return BatchProof(self.batch_first_round, self.batch_path, self.signature)

    def to_record(self) -> Record:
        record: Record = {MESSAGE_KEY: self.CODE, **{key: getattr(self, key) for key in self.KEYS}}
        record["batch_path"] = _path_bytes(type(self), self.batch_path)
        return record

    @classmethod
    def from_record(cls, record: Record) -> "KeyAdvertisement":
        _check_keys(cls, record, cls.KEYS)
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            _bytes(cls, record, "share_public_key", KEY_BYTES),
            _bytes(cls, record, "mask_public_key", KEY_BYTES),
            _bytes(cls, record, "self_mask_commitment", KEY_BYTES),
            _bytes(cls, record, "identity_key", KEY_BYTES),
            _bytes(cls, record, "signature", SIGNATURE_BYTES),
            _id(cls, record, "batch_first_round"),
            _path(cls, record["batch_path"], "batch_path"),
        )


# ---------------------------------------------------------------- stage 2: SHARE_KEYS


@dataclass(frozen=True)
class KeyBroadcast:
    """Server -> client: the graph members with their advertisement digests, and the neighbours' signed ads.

    The client recomputes the graph seed from ``member_digests`` (checking its own and its
    neighbours' digests against the advertisements it can verify), so the graph is the one every
    advertisement fixed, not one the server picked.
    """

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    SENDER: ClassVar[str] = "server"
    CODE: ClassVar[int] = 20
    NEIGHBOUR_FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("share_public_keys", KEY_BYTES), ("mask_public_keys", KEY_BYTES), ("commitments", KEY_BYTES),
        ("identity_keys", KEY_BYTES), ("signatures", SIGNATURE_BYTES),
    )
    KEYS: ClassVar[tuple[str, ...]] = (
        "round_id", "client_id", "members", "member_digests", "neighbour_ids",
        *(name for name, _ in NEIGHBOUR_FIELDS), "batch_first_rounds", "batch_depths", "batch_paths",
    )

    round_id: int
    client_id: int  # the recipient
    members: tuple[int, ...]  # every client whose signed keys arrived; the graph is built over them
    member_digests: tuple[bytes, ...]  # SHA-256 of each member's advertisement, aligned with members
    neighbour_ids: tuple[int, ...]
    share_public_keys: tuple[bytes, ...]  # aligned with neighbour_ids
    mask_public_keys: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    identity_keys: tuple[bytes, ...]
    signatures: tuple[bytes, ...]
    batch_first_rounds: tuple[int, ...]
    batch_paths: tuple[tuple[bytes, ...], ...]

    def proof(self, k: int) -> BatchProof:
        """What authenticates neighbour ``k``'s advertisement (see :mod:`.keybatch`)."""
        return BatchProof(self.batch_first_rounds[k], self.batch_paths[k], self.signatures[k])

    def to_record(self) -> Record:
        cls = type(self)
        _same_length(cls, ("members", self.members), ("member_digests", self.member_digests))
        _same_length(cls, ("neighbour_ids", self.neighbour_ids),
                     *((name, getattr(self, name)) for name, _ in self.NEIGHBOUR_FIELDS),
                     ("batch_first_rounds", self.batch_first_rounds), ("batch_paths", self.batch_paths))
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "client_id": self.client_id,
            "members": list(self.members),
            "member_digests": _join(self.member_digests, KEY_BYTES, cls, "member_digests"),
            "neighbour_ids": list(self.neighbour_ids),
            **{name: _join(getattr(self, name), size, cls, name) for name, size in self.NEIGHBOUR_FIELDS},
            "batch_first_rounds": list(self.batch_first_rounds),
            "batch_depths": [len(path) for path in self.batch_paths],
            "batch_paths": b"".join(_path_bytes(cls, path) for path in self.batch_paths),
        }

    @classmethod
    def from_record(cls, record: Record) -> "KeyBroadcast":
        _check_keys(cls, record, cls.KEYS)
        members = _ids(cls, record, "members")
        neighbours = _ids(cls, record, "neighbour_ids")
        firsts = _ints(cls, record, "batch_first_rounds")
        depths = _ints(cls, record, "batch_depths", MAX_BATCH_DEPTH)
        _same_length(cls, ("neighbour_ids", neighbours), ("batch_first_rounds", firsts), ("batch_depths", depths))
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            members,
            _blob(cls, record, "member_digests", KEY_BYTES, len(members)),
            neighbours,
            *(_blob(cls, record, name, size, len(neighbours)) for name, size in cls.NEIGHBOUR_FIELDS),
            firsts,
            _paths(cls, record, depths),
        )


@dataclass(frozen=True)
class ShareDistribution:
    """Client -> server: for each neighbour, its self-mask-seed share and its mask-key share, each sealed
    under its own key (``masks.share_key``), for the server to relay and keep."""

    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    SENDER: ClassVar[str] = "client"
    CODE: ClassVar[int] = 21
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "receiver_ids", "seed_shares", "key_shares")

    round_id: int
    client_id: int  # the sender
    receiver_ids: tuple[int, ...]
    seed_shares: tuple[bytes, ...]  # SEALED_SHARE_BYTES each, aligned with receiver_ids
    key_shares: tuple[bytes, ...]  # SEALED_SHARE_BYTES each, aligned with receiver_ids

    def to_record(self) -> Record:
        cls = type(self)
        _same_length(cls, ("receiver_ids", self.receiver_ids), ("seed_shares", self.seed_shares),
                     ("key_shares", self.key_shares))
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "client_id": self.client_id,
            "receiver_ids": list(self.receiver_ids),
            "seed_shares": _join(self.seed_shares, SEALED_SHARE_BYTES, cls, "seed_shares"),
            "key_shares": _join(self.key_shares, SEALED_SHARE_BYTES, cls, "key_shares"),
        }

    @classmethod
    def from_record(cls, record: Record) -> "ShareDistribution":
        _check_keys(cls, record, cls.KEYS)
        receivers = _ids(cls, record, "receiver_ids")
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            receivers,
            _blob(cls, record, "seed_shares", SEALED_SHARE_BYTES, len(receivers)),
            _blob(cls, record, "key_shares", SEALED_SHARE_BYTES, len(receivers)),
        )


# ---------------------------------------------------------------- stage 3: MASKED_INPUT


@dataclass(frozen=True)
class ShareRelay:
    """Server -> client: the sealed shares addressed to it, as received (the server cannot read them)."""

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    SENDER: ClassVar[str] = "server"
    CODE: ClassVar[int] = 30
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "sender_ids", "seed_shares", "key_shares")

    round_id: int
    client_id: int  # the recipient
    sender_ids: tuple[int, ...]
    seed_shares: tuple[bytes, ...]
    key_shares: tuple[bytes, ...]

    def to_record(self) -> Record:
        cls = type(self)
        _same_length(cls, ("sender_ids", self.sender_ids), ("seed_shares", self.seed_shares),
                     ("key_shares", self.key_shares))
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "client_id": self.client_id,
            "sender_ids": list(self.sender_ids),
            "seed_shares": _join(self.seed_shares, SEALED_SHARE_BYTES, cls, "seed_shares"),
            "key_shares": _join(self.key_shares, SEALED_SHARE_BYTES, cls, "key_shares"),
        }

    @classmethod
    def from_record(cls, record: Record) -> "ShareRelay":
        _check_keys(cls, record, cls.KEYS)
        senders = _ids(cls, record, "sender_ids")
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            senders,
            _blob(cls, record, "seed_shares", SEALED_SHARE_BYTES, len(senders)),
            _blob(cls, record, "key_shares", SEALED_SHARE_BYTES, len(senders)),
        )


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Client -> server: ``y_i = encode(w_i x_i) + PRG(b_i) + Σ_j ±PRG(s_ij) mod 2**32`` and the public
    weight ``w_i`` (a power-of-two bucket, checked on its own against ``max_weight``)."""

    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    SENDER: ClassVar[str] = "client"
    CODE: ClassVar[int] = 31
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "weight", "masked")

    round_id: int
    client_id: int
    weight: int
    masked: np.ndarray  # uint32, length vector_length

    def to_record(self) -> Record:
        return {MESSAGE_KEY: self.CODE, "round_id": self.round_id, "client_id": self.client_id,
                "weight": self.weight, "masked": self.masked}

    @classmethod
    def from_record(cls, record: Record) -> "MaskedInput":
        _check_keys(cls, record, cls.KEYS)
        masked = record["masked"]
        if not isinstance(masked, np.ndarray) or masked.dtype != np.uint32 or masked.ndim != 1:
            raise _fail(cls, "masked must be a 1-D numpy uint32 array")
        return cls(_id(cls, record, "round_id"), _id(cls, record, "client_id"), _id(cls, record, "weight"), masked)


# ---------------------------------------------------------------- stage 4: CONSISTENCY


@dataclass(frozen=True)
class ConsistencyRequest:
    """Server -> each survivor: who sent a masked input and who shared keys but did not."""

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    SENDER: ClassVar[str] = "server"
    CODE: ClassVar[int] = 35
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "survivors", "dropped")

    round_id: int
    client_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def to_record(self) -> Record:
        return {MESSAGE_KEY: self.CODE, "round_id": self.round_id, "client_id": self.client_id,
                "survivors": list(self.survivors), "dropped": list(self.dropped)}

    @classmethod
    def from_record(cls, record: Record) -> "ConsistencyRequest":
        _check_keys(cls, record, cls.KEYS)
        return cls(_id(cls, record, "round_id"), _id(cls, record, "client_id"), _ids(cls, record, "survivors"),
                   _ids(cls, record, "dropped"))


@dataclass(frozen=True)
class ConsistencySignature:
    """Survivor -> server: for each surviving neighbour, an HMAC of (run, round, survivors, dropped, graph
    seed) under their pairwise key; the server relays each tag to its receiver and cannot forge one."""

    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    SENDER: ClassVar[str] = "client"
    CODE: ClassVar[int] = 36
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "receiver_ids", "tags")

    round_id: int
    client_id: int
    receiver_ids: tuple[int, ...]
    tags: tuple[bytes, ...]  # CONSISTENCY_TAG_BYTES each, aligned with receiver_ids

    def to_record(self) -> Record:
        _same_length(type(self), ("receiver_ids", self.receiver_ids), ("tags", self.tags))
        return {MESSAGE_KEY: self.CODE, "round_id": self.round_id, "client_id": self.client_id,
                "receiver_ids": list(self.receiver_ids),
                "tags": _join(self.tags, CONSISTENCY_TAG_BYTES, type(self), "tags")}

    @classmethod
    def from_record(cls, record: Record) -> "ConsistencySignature":
        _check_keys(cls, record, cls.KEYS)
        receivers = _ids(cls, record, "receiver_ids")
        return cls(_id(cls, record, "round_id"), _id(cls, record, "client_id"), receivers,
                   _blob(cls, record, "tags", CONSISTENCY_TAG_BYTES, len(receivers)))


# ---------------------------------------------------------------- stage 5: UNMASK


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client: the survivor set, with the tags its neighbours made for it over that set."""

    STAGE: ClassVar[Stage] = Stage.UNMASK
    SENDER: ClassVar[str] = "server"
    CODE: ClassVar[int] = 40
    KEYS: ClassVar[tuple[str, ...]] = ("round_id", "client_id", "survivors", "dropped", "signer_ids", "tags")

    round_id: int
    client_id: int
    survivors: tuple[int, ...]  # answer with self-mask shares for these
    dropped: tuple[int, ...]  # answer with mask-key shares for these
    signer_ids: tuple[int, ...]  # neighbours of the recipient that authenticated a survivor set to it
    tags: tuple[bytes, ...]  # aligned with signer_ids

    def to_record(self) -> Record:
        _same_length(type(self), ("signer_ids", self.signer_ids), ("tags", self.tags))
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "client_id": self.client_id,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "signer_ids": list(self.signer_ids),
            "tags": _join(self.tags, CONSISTENCY_TAG_BYTES, type(self), "tags"),
        }

    @classmethod
    def from_record(cls, record: Record) -> "UnmaskRequest":
        _check_keys(cls, record, cls.KEYS)
        signers = _ids(cls, record, "signer_ids")
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            _ids(cls, record, "survivors"),
            _ids(cls, record, "dropped"),
            signers,
            _blob(cls, record, "tags", CONSISTENCY_TAG_BYTES, len(signers)),
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server: the keys that open its sealed self-mask-seed shares of surviving neighbours and
    its sealed mask-key shares of dropped ones (the server opens the ciphertexts it relayed), and the
    neighbours whose shares it could not open when they arrived (it holds nothing of theirs)."""

    STAGE: ClassVar[Stage] = Stage.UNMASK
    SENDER: ClassVar[str] = "client"
    CODE: ClassVar[int] = 41
    KEYS: ClassVar[tuple[str, ...]] = (
        "round_id", "client_id", "self_mask_owners", "self_mask_openers", "mask_key_owners", "mask_key_openers",
        "unopened",
    )

    round_id: int
    client_id: int
    self_mask_owners: tuple[int, ...]
    self_mask_openers: tuple[bytes, ...]  # OPENER_BYTES each, aligned with self_mask_owners
    mask_key_owners: tuple[int, ...]
    mask_key_openers: tuple[bytes, ...]
    unopened: tuple[int, ...] = ()

    def to_record(self) -> Record:
        cls = type(self)
        _same_length(cls, ("self_mask_owners", self.self_mask_owners), ("self_mask_openers", self.self_mask_openers))
        _same_length(cls, ("mask_key_owners", self.mask_key_owners), ("mask_key_openers", self.mask_key_openers))
        return {
            MESSAGE_KEY: self.CODE,
            "round_id": self.round_id,
            "client_id": self.client_id,
            "self_mask_owners": list(self.self_mask_owners),
            "self_mask_openers": _join(self.self_mask_openers, OPENER_BYTES, cls, "self_mask_openers"),
            "mask_key_owners": list(self.mask_key_owners),
            "mask_key_openers": _join(self.mask_key_openers, OPENER_BYTES, cls, "mask_key_openers"),
            "unopened": list(self.unopened),
        }

    @classmethod
    def from_record(cls, record: Record) -> "UnmaskResponse":
        _check_keys(cls, record, cls.KEYS)
        self_owners = _ids(cls, record, "self_mask_owners")
        key_owners = _ids(cls, record, "mask_key_owners")
        return cls(
            _id(cls, record, "round_id"),
            _id(cls, record, "client_id"),
            self_owners,
            _blob(cls, record, "self_mask_openers", OPENER_BYTES, len(self_owners)),
            key_owners,
            _blob(cls, record, "mask_key_openers", OPENER_BYTES, len(key_owners)),
            _ids(cls, record, "unopened"),
        )


# ---------------------------------------------------------------- the registry

Message = Union[
    RoundSetup, KeyAdvertisement, KeyBroadcast, ShareDistribution, ShareRelay, MaskedInput, ConsistencyRequest,
    ConsistencySignature, UnmaskRequest, UnmaskResponse,
]

WIRE_MESSAGES: tuple[type, ...] = (
    RoundSetup, KeyAdvertisement, KeyBroadcast, ShareDistribution, ShareRelay, MaskedInput, ConsistencyRequest,
    ConsistencySignature, UnmaskRequest, UnmaskResponse,
)
"""Every message type, in protocol order. Nothing else is ever sent."""

_BY_CODE = {cls.CODE: cls for cls in WIRE_MESSAGES}


def message_from_record(record: Record) -> Message:
    """Decode any record by its ``message`` code."""
    code = record.get(MESSAGE_KEY)
    if type(code) is not int or code not in _BY_CODE:
        raise SecAggProtocolError(f"record has no known message code (got {code!r})")
    return _BY_CODE[code].from_record(record)


def value_nbytes(value: RecordValue) -> int:
    """Payload size of one record value: bytes as is, ints and floats 8, lists 8 per int, arrays nbytes."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return 8 * len(value)
    return 8


def record_nbytes(record: Record) -> int:
    """Bytes a record puts on the wire: UTF-8 keys plus :func:`value_nbytes` of each value."""
    return sum(len(key.encode()) + value_nbytes(value) for key, value in record.items())
