"""Long-term Ed25519 identities and the federation's roster: what the platform cannot substitute.

Each shop holds one Ed25519 identity key (``fedinterest keys new``). The federation's roster is
a JSON file of every shop's public identity key; each shop pins its own copy and compares its
fingerprint (:meth:`Roster.fingerprint`) with the others out of band. Every key advertisement is
signed over (protocol, run, round, id, both public keys, commitment), through the Merkle root of
the shop's batch of rounds (:mod:`.keybatch`), and checked against the roster before any share is
made, so a server that puts its own keys between two shops is caught.
Before unmasking, each survivor authenticates the survivor set to each neighbour with an HMAC
under their pairwise key (Bonawitz et al.'s consistency check, with the signatures replaced by
MACs under keys the signed advertisements already authenticate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.exceptions import CryptoError
from nacl.bindings import crypto_sign_open

from .errors import SecAggConfigError, SecAggIntegrityError
from .primitives import KEY_BYTES, Randomness, context

SIGNATURE_BYTES = 64
CONSISTENCY_TAG_BYTES = 32  # HMAC-SHA256 consistency tags
ROSTER_FORMAT = "fedinterest-roster/1"
NO_SUBJECT = bytes(32)  # the subject digest of a round about nothing in particular (tests, benchmarks)
IDENTITY_FILE = "identity.key"  # raw 32-byte Ed25519 private key, mode 0600, in the shop's state dir


class Identity:
    """A shop's Ed25519 identity key: signs its advertisements and survivor sets."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, randomness: Randomness | None = None) -> "Identity":
        """A fresh key from the OS CSPRNG, or from ``randomness`` (seeded simulations only)."""
        if randomness is None:
            return cls(Ed25519PrivateKey.generate())
        return cls(Ed25519PrivateKey.from_private_bytes(randomness(KEY_BYTES)))

    @classmethod
    def load(cls, path: str | Path) -> "Identity":
        raw = Path(path).read_bytes()
        if len(raw) != KEY_BYTES:
            raise SecAggConfigError(f"{path}: an identity key file holds 32 raw bytes, found {len(raw)}; "
                                    "make one with `fedinterest keys new`")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def save(self, path: str | Path) -> None:
        """Write the private key (0600) through a temporary file; never overwrites an existing key."""
        path = Path(path)
        if path.exists():
            raise SecAggConfigError(f"{path} already exists; refusing to overwrite an identity key")
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = self._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".identity-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, raw)
            os.close(fd)
            os.link(tmp, path)  # fails if someone created the key meanwhile
        finally:
            os.unlink(tmp)

    def sign(self, payload: bytes) -> bytes:
        return self._private.sign(payload)


def verify(public_key: bytes, signature: bytes, payload: bytes, what: str) -> None:
    """Raise :class:`SecAggIntegrityError` unless ``signature`` is ``public_key``'s over ``payload``.

    libsodium verifies, called directly (PyNaCl's binding, no ``VerifyKey`` object per call): a
    client checks every neighbour's advertisement each round, and this takes half the time of
    OpenSSL's Ed25519 and three quarters of PyNaCl's object interface on the machines we measured.
    """
    if not (isinstance(public_key, bytes) and len(public_key) == KEY_BYTES
            and isinstance(signature, bytes) and len(signature) == SIGNATURE_BYTES):
        raise SecAggIntegrityError(f"{what}: signature does not verify (malformed key or signature)")
    try:
        crypto_sign_open(signature + payload, public_key)
    except (CryptoError, ValueError, TypeError) as err:
        raise SecAggIntegrityError(f"{what}: signature does not verify") from err


def consistency_tag(key: bytes, payload: bytes) -> bytes:
    """HMAC-SHA256 of a survivor set under the pairwise key two neighbours agreed (see the client)."""
    return hmac.new(key, payload, hashlib.sha256).digest()


def advertisement_payload(run_id: int, round_id: int, client_id: int, share_public_key: bytes,
                          mask_public_key: bytes, self_mask_commitment: bytes) -> bytes:
    """What a key advertisement's signature covers."""
    return context(b"advertise", run_id, round_id, client_id, share_public_key, mask_public_key,
                   self_mask_commitment)


def survivors_payload(run_id: int, round_id: int, survivors: Iterable[int], dropped: Iterable[int],
                      members_digest: bytes, subject: bytes = NO_SUBJECT) -> bytes:
    """What a survivor vouches for before unmasking: the round, who survived, who dropped, the member
    list, and the digest of what the round is about (the adapter it trained from or evaluates, the
    statistics request), so the server cannot have neighbours work on different ones."""
    return context(b"survivors", run_id, round_id, _ids_digest(survivors), _ids_digest(dropped), members_digest,
                   subject)


def _ids_digest(ids: Iterable[int]) -> bytes:
    return hashlib.sha256(b"".join(i.to_bytes(8, "big") for i in sorted(ids))).digest()


@dataclass(frozen=True)
class Roster:
    """The public identity keys of the federation's shops, by name; pinned by every shop."""

    keys: Mapping[str, bytes]  # shop name -> Ed25519 public key (32 bytes)

    def __post_init__(self) -> None:
        if not self.keys:
            raise SecAggConfigError("the roster lists no shop")
        for name, key in self.keys.items():
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise SecAggConfigError(f"roster: the key of {name!r} must be 32 bytes (Ed25519 public key)")
        if len(set(self.keys.values())) != len(self.keys):
            raise SecAggConfigError("roster: two shops share one identity key")
        object.__setattr__(self, "_members", frozenset(self.keys.values()))

    def __contains__(self, public_key: object) -> bool:
        return public_key in self._members  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical roster: every shop compares it out of band before joining."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        members = {name: self.keys[name].hex() for name in sorted(self.keys)}
        return json.dumps({"format": ROSTER_FORMAT, "shops": members}, indent=1, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".roster-")
        with os.fdopen(fd, "w") as handle:
            handle.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SecAggConfigError(f"{path}: cannot read the roster ({err})") from None
        if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT or not isinstance(data.get("shops"), dict):
            raise SecAggConfigError(f"{path}: not a roster (expected format {ROSTER_FORMAT!r} with a 'shops' map)")
        try:
            keys = {str(name): bytes.fromhex(str(key)) for name, key in data["shops"].items()}
        except ValueError:
            raise SecAggConfigError(f"{path}: every key of 'shops' must be 64 hex digits") from None
        return cls(keys)


def advertisement_digest(payload: bytes, identity_key: bytes) -> bytes:
    """SHA-256 of what an advertisement commits to (its :func:`advertisement_payload`), its signer
    included: one entry of the graph seed."""
    return hashlib.sha256(payload + identity_key).digest()


def graph_seed(run_id: int, round_id: int, member_digests: Mapping[int, bytes]) -> bytes:
    """The neighbour graph's seed: a hash of every member's signed advertisement.

    Each honest member's advertisement holds fresh random keys made after the round was set up,
    so the server cannot know the seed before it has every advertisement, and cannot choose it
    except by leaving advertisements out (which the members' floors bound).
    """
    digest = hashlib.sha256(context(b"graph-seed", run_id, round_id))
    for client_id in sorted(member_digests):
        digest.update(client_id.to_bytes(8, "big") + member_digests[client_id])
    return digest.digest()
