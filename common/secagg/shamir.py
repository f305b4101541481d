"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**264 - 275), Python ints.

A secret ``s`` is the constant term of a random polynomial ``f`` of degree ``t - 1``; client ``j``
holds ``f(j + 1)`` (the point is ``id + 1`` so id 0 works). Any ``t`` shares give ``s`` by Lagrange
interpolation at 0; any ``t - 1`` shares are consistent with every possible secret, so they
reveal nothing. The field is larger than 2**256, so every 32-byte secret is a field element,
and a share is 33 bytes. An altered share mostly decodes past 2**256 (probability 1 - 2**-8);
the server checks every reconstruction against the owner's commitment or public key anyway.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .errors import SecAggIntegrityError
from .primitives import Randomness

PRIME = 2**264 - 275  # the largest prime below 2**264
SHARE_BYTES = 33
SECRET_BYTES = 32


def share_point(client_id: int) -> int:
    """The evaluation point of the share held by ``client_id``."""
    return client_id + 1


def random_field_element(randomness: Randomness) -> int:
    """Uniform in [0, PRIME): 264 random bits, rejecting the 275 values past PRIME."""
    while True:
        value = int.from_bytes(randomness(SHARE_BYTES), "big")
        if value < PRIME:
            return value


def split(secret: bytes, holders: Sequence[int], threshold: int, randomness: Randomness) -> dict[int, int]:
    """Shares of ``secret`` for each client id in ``holders``; any ``threshold`` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold must be in [1, {len(holders)} holders], got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [random_field_element(randomness) for _ in range(threshold - 1)]
    shares = {}
    for holder in holders:
        x, y = share_point(holder), 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[holder] = y
    return shares


def interpolate(shares: Mapping[int, int], at: int = 0) -> int:
    """Value at point ``at`` of the lowest-degree polynomial through the shares (keyed by holder id)."""
    points = [(share_point(holder), y) for holder, y in shares.items()]
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares.

    Uses the ``threshold`` shares of the lowest holder ids and checks that every further share lies
    on the same polynomial, so an altered share is detected whenever more than ``threshold`` arrive.
    Raises ``ValueError`` with fewer than ``threshold`` shares, :class:`SecAggIntegrityError` when the
    shares are inconsistent or do not decode to a 32-byte secret.
    """
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    holders = sorted(shares)
    basis = {holder: shares[holder] for holder in holders[:threshold]}
    for extra in holders[threshold:]:
        if interpolate(basis, share_point(extra)) != shares[extra]:
            raise SecAggIntegrityError(f"share held by client {extra} is inconsistent with the others")
    secret = interpolate(basis)
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise SecAggIntegrityError("shares do not decode to a 32-byte secret (altered share)")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(share: int) -> bytes:
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise SecAggIntegrityError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value >= PRIME:
        raise SecAggIntegrityError("share is not a field element")
    return value
