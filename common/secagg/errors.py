"""The exceptions of the secure-aggregation core: one per way a round can fail."""

from __future__ import annotations

from fedinterest.common.config import ConfigError


class SecAggError(Exception):
    """Base class: the round did not produce a result."""


class SecAggConfigError(SecAggError, ConfigError):
    """A :class:`~common.secagg.config.SecAggConfig` value that cannot work; names the field."""


class SecAggAbort(SecAggError):
    """Too many clients dropped for the round to finish; no partial result exists.

    Raised as soon as the round can no longer be completed (a survivor with fewer than ``t``
    live neighbours, a dropped client whose mask key cannot be rebuilt, fewer than
    ``min_clients`` inputs). Nothing beyond what the protocol reveals has been revealed.
    ``culprits``: clients shown to have caused it (a client whose own authentic shares do not
    rebuild the secret it committed to); the caller may leave them out of later rounds.
    """

    def __init__(self, message: str, culprits: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.culprits = tuple(sorted(set(culprits)))


class SecAggProtocolError(SecAggError):
    """A message arrived out of order, for another round or client, or is malformed."""


class SecAggIntegrityError(SecAggError):
    """Authentication or consistency failed: a tampered, re-addressed or replayed message."""


class ShareKindViolation(SecAggProtocolError, AssertionError):
    """Someone asked for, or the server was about to hold, both share kinds of one client.

    Holding both the self-mask share and the mask-key share of one client would let the server
    strip every mask from that client's input. Clients refuse such requests; the server checks
    it never collects both (an explicit check, not ``assert``, so ``python -O`` keeps it).
    """
