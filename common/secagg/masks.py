"""The masks of SecAgg+ and the keys that seal shares, all derived from per-round secrets.

``y_i = x_i + PRG(b_i) + Σ_{j in N(i)} sign(i, j) PRG(s_ij)  (mod 2**32)`` with ``sign = +1``
when ``i < j`` and ``-1`` otherwise, so pair masks cancel in the sum over any set containing
both ends. ``PRG`` is the AES-256-CTR keystream of an HKDF key bound to the round and the ids.
"""

from __future__ import annotations

import numpy as np

from .primitives import context, derive_key, mask_vector


def self_mask(seed: bytes, round_id: int, client_id: int, length: int) -> np.ndarray:
    """``PRG(b_i)``: the self mask of ``client_id`` from its 32-byte seed."""
    return mask_vector(derive_key(seed, b"self-mask", round_id, client_id), length)


def pair_mask(shared_secret: bytes, round_id: int, a: int, b: int, length: int) -> np.ndarray:
    """``PRG(s_ab)``: the mask both ends derive from their X25519 shared secret (symmetric in a, b)."""
    return mask_vector(derive_key(shared_secret, b"pair-mask", round_id, min(a, b), max(a, b)), length)


def pair_sign(owner: int, other: int) -> int:
    """+1 if ``owner`` adds the pair mask with ``other`` to its input, -1 if it subtracts it."""
    return 1 if owner < other else -1


def add_signed(target: np.ndarray, mask: np.ndarray, sign: int) -> None:
    """``target += sign * mask`` in place, mod 2**32."""
    (np.add if sign > 0 else np.subtract)(target, mask, out=target)


SEED_SHARE, KEY_SHARE = b"self-mask-seed", b"mask-key"  # the two kinds of share a client deals


def share_associated_data(round_id: int, sender: int, receiver: int, kind: bytes) -> bytes:
    """AES-GCM associated data of a sealed share: protocol, kind, round, sender, receiver."""
    return context(b"share", kind, round_id, sender, receiver)


def share_key(shared_secret: bytes, round_id: int, sender: int, receiver: int, kind: bytes) -> bytes:
    """The AES-256-GCM key of the one ``kind`` share ``sender`` seals for ``receiver`` in this round.

    One key per share: at unmasking the receiver reveals it (never the share), the server opens the
    ciphertext it relayed, and a receiver that lies reveals a key that opens nothing.
    """
    return derive_key(shared_secret, b"share-key", kind, round_id, sender, receiver)
