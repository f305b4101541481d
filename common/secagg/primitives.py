"""Cryptographic building blocks, all from ``cryptography``: X25519, HKDF-SHA256, AES-GCM, AES-CTR.

Every key is derived with HKDF-SHA256 under a domain-separated ``info`` string
(``PROTOCOL | purpose | round id | client ids``), so no key is ever used for two purposes, two
rounds or two pairs. Randomness is injected as a :data:`Randomness` callable (``os.urandom`` by
default) so runs are reproducible in tests.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Callable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import SecAggIntegrityError

PROTOCOL = b"fedinterest-secagg+/v3"  # v3: colluders from the roster, one sealed share per kind, public weights
KEY_BYTES = 32  # X25519 keys, seeds, AES-256 keys
NONCE_BYTES = 12  # AES-GCM nonce
TAG_BYTES = 16  # AES-GCM tag
MAX_ID = 2**64 - 1  # client and round ids travel as unsigned 64-bit integers

Randomness = Callable[[int], bytes]
"""``randomness(n)`` returns ``n`` uniformly random bytes; ``os.urandom`` in production."""

default_randomness: Randomness = os.urandom


def _aes_ctr_keystream(key: bytes, nbytes: int) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


class SeededRandomness:
    """A deterministic :data:`Randomness` for tests and simulations: an AES-CTR stream.

    ``SeededRandomness(7, "client", 3)`` and ``SeededRandomness(7, "client", 4)`` are independent
    streams; the same arguments always give the same bytes. Never use it in production.
    """

    def __init__(self, seed: int | bytes | str, *labels: int | bytes | str) -> None:
        digest = hashlib.sha256(PROTOCOL + b"|seeded-randomness")
        for part in (seed, *labels):
            raw = part if isinstance(part, bytes) else str(part).encode()
            digest.update(struct.pack(">Q", len(raw)) + raw)
        self._encryptor = Cipher(algorithms.AES(digest.digest()), modes.CTR(bytes(16))).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._encryptor.update(bytes(n))


def context(*parts: bytes | int) -> bytes:
    """Unambiguous encoding of labels (length-prefixed bytes) and ids (unsigned 64-bit)."""
    out = bytearray(PROTOCOL)
    for part in parts:
        if isinstance(part, bytes):
            out += struct.pack(">BH", 0, len(part)) + part
        else:
            out += struct.pack(">BQ", 1, part)
    return bytes(out)


def derive_key(secret: bytes, purpose: bytes, *ids: int | bytes) -> bytes:
    """HKDF-SHA256 of ``secret`` to a 32-byte key bound to ``purpose`` and ``ids``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context(purpose, *ids)).derive(
        secret
    )


def new_private_key(randomness: Randomness) -> X25519PrivateKey:
    """An X25519 private key whose 32 bytes come from ``randomness``."""
    return X25519PrivateKey.from_private_bytes(randomness(KEY_BYTES))


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with ``peer_public``; a malformed or low-order key is an integrity error."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise SecAggIntegrityError(f"unusable X25519 public key: {err}") from err


def commitment(secret: bytes, round_id: int, client_id: int) -> bytes:
    """SHA-256 commitment to a 32-byte random secret (hiding because the secret has 256 bits)."""
    return hashlib.sha256(context(b"self-mask-commitment", round_id, client_id) + secret).digest()


def seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM: returns ``nonce || ciphertext || tag``."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`; any change to key, nonce, ciphertext or associated data fails."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag as err:
        raise SecAggIntegrityError(
            "share ciphertext failed authentication (tampered, re-addressed, or from another round)"
        ) from err


ZERO_NONCE = bytes(NONCE_BYTES)


def seal_once(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM under a key used for this one message only (so a fixed nonce): ``ciphertext || tag``.

    Revealing ``key`` later opens this message and nothing else; and nobody but its sender can make a
    ciphertext that another key opens (the sender is honest, or is the one caught).
    """
    return AESGCM(key).encrypt(ZERO_NONCE, plaintext, associated_data)


def open_once(key: bytes, sealed: bytes, associated_data: bytes) -> bytes | None:
    """Inverse of :func:`seal_once`, or ``None`` when ``key`` does not open ``sealed`` (any change fails)."""
    try:
        return AESGCM(key).decrypt(ZERO_NONCE, sealed, associated_data)
    except InvalidTag:
        return None


def mask_vector(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint32 values: the AES-256-CTR keystream of ``key`` (zero IV), little-endian.

    Each ``key`` is fresh (HKDF output bound to round and ids), so the fixed IV never repeats
    under one key. One keystream call, then a zero-copy view.
    """
    return np.frombuffer(_aes_ctr_keystream(key, 4 * length), dtype="<u4")


def uniform_floats(seed: bytes, length: int) -> np.ndarray:
    """``length`` floats uniform on [0, 1) with 53-bit resolution, from an AES-CTR stream of ``seed``."""
    words = np.frombuffer(_aes_ctr_keystream(seed, 8 * length), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * (2.0**-53)
