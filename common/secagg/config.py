"""SecAggConfig: the public parameters of a secure-aggregation round, validated at construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import SecAggConfigError

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
MAX_FRAC_BITS = 52  # beyond this float64 cannot carry the fixed-point value exactly anyway
DEFAULT_COLLUDING_FRACTION = 0.2  # of the roster: shops that may collude with the server


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SecAggConfigError(message)


def element_bound(clip: float, max_weight: int, frac_bits: int) -> int:
    """``B = ceil(max_weight * clip * 2**frac_bits)``: the largest ``|q|`` one client can send.

    Computed with the same float64 operations as :func:`common.secagg.quantize.quantize`, so the
    bound holds for the rounded values too (float multiplication is monotone).
    """
    return math.ceil(float(max_weight) * float(clip) * 2.0**frac_bits)


def fits(max_clients: int, clip: float, max_weight: int, frac_bits: int) -> bool:
    """Whether the sum of ``max_clients`` encoded inputs can never overflow Z_2^32 (see quantize)."""
    return (
        max_clients * element_bound(clip, max_weight, frac_bits) <= INT32_MAX
        and max_clients * max_weight <= UINT32_MAX
    )


def planned_colluders(roster_size: int, colluding_fraction: float = DEFAULT_COLLUDING_FRACTION) -> int:
    """``⌈γ · |roster|⌉``: the colluding shops a threshold must withstand, whatever members a round has.

    Planned from the roster (which the shops pin), never from the round's size (which the server picks):
    a server that seats a victim with two colluders in a round of three must still face a threshold
    that two colluders cannot reach.
    """
    return math.ceil(colluding_fraction * roster_size - 1e-9)


def max_frac_bits(max_clients: int, clip: float, max_weight: int) -> int | None:
    """The largest ``frac_bits`` in [0, 52] that :func:`fits`, or ``None`` if even 0 does not."""
    for frac_bits in range(MAX_FRAC_BITS, -1, -1):
        if fits(max_clients, clip, max_weight, frac_bits):
            return frac_bits
    return None


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters shared by server and clients (sent in the setup message and checked).

    - ``vector_length``: parameters per update (the masked vector has one more element: the weight).
    - ``max_clients``: most clients one round may have; sizes the overflow check.
    - ``clip``: each update element is clipped to ``[-clip, clip]`` before encoding.
    - ``max_weight``: largest client weight. Each client's weight is public (a power-of-two bucket
      of its example count, sent beside its masked input) and checked on its own.
    - ``norm_bound``: each update is scaled to L2 norm at most ``norm_bound`` before encoding, and
      the server projects the unmasked sum onto ``‖Σ w x‖ ≤ Σw · norm_bound`` (and the clip box), so
      no input, however crafted, moves the mean further than that; ``None``: the clip box only.
    - ``frac_bits``: fixed point scale ``2**frac_bits``; ``None`` picks the largest that fits.
      The weighted mean is accurate to ``2**-frac_bits`` per element (see ``quantize``).
    - ``degree``: neighbours per client (even); ``None`` = the least degree that Bell et al.'s
      bounds allow for ``colluders`` and ``dropout_fraction``, or everyone (see ``graph``).
    - ``min_clients``: the round aborts when fewer inputs than this would be summed (a sum over
      one or two clients reveals too much); at least 2.
    - ``colluders``: how many shops may collude with the server (planned from the roster,
      :func:`planned_colluders`); sets the Shamir threshold ``⌊(k + c)/2⌋ + 1`` with ``c`` the most
      of them one neighbourhood can hold (``graph.threshold_for``). ``None``: ``⌈0.2 · max_clients⌉``.
    - ``dropout_fraction``: the fraction of clients expected to drop; sets the degree.
    """

    vector_length: int
    max_clients: int
    clip: float = 1.0
    max_weight: int = 1
    frac_bits: int | None = None
    degree: int | None = None
    min_clients: int = 3
    colluders: int | None = None
    dropout_fraction: float = 0.1
    norm_bound: float | None = None

    def __post_init__(self) -> None:
        value = self.dropout_fraction
        _require(isinstance(value, (int, float)) and 0 <= value < 0.5,
                 f"dropout_fraction must be a number in [0, 0.5), got {value!r}")
        object.__setattr__(self, "dropout_fraction", float(value))
        if self.colluders is None and isinstance(self.max_clients, int):
            object.__setattr__(self, "colluders", planned_colluders(self.max_clients))
        _require(isinstance(self.colluders, int) and not isinstance(self.colluders, bool) and self.colluders >= 0,
                 f"colluders must be None (automatic) or an int >= 0, got {self.colluders!r}")
        _require(self.norm_bound is None or (isinstance(self.norm_bound, (int, float)) and
                                             math.isfinite(self.norm_bound) and self.norm_bound > 0),
                 f"norm_bound must be None or a finite number > 0 (L2 bound of one update), got {self.norm_bound!r}")
        if self.norm_bound is not None:
            object.__setattr__(self, "norm_bound", float(self.norm_bound))
        _require(
            isinstance(self.vector_length, int) and self.vector_length >= 1,
            f"vector_length must be an int >= 1 (parameters per update), got {self.vector_length!r}",
        )
        _require(
            isinstance(self.max_clients, int) and self.max_clients >= 2,
            f"max_clients must be an int >= 2, got {self.max_clients!r}",
        )
        _require(
            isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0,
            f"clip must be a finite number > 0 (elementwise clipping bound), got {self.clip!r}",
        )
        object.__setattr__(self, "clip", float(self.clip))
        _require(
            isinstance(self.max_weight, int) and self.max_weight >= 1,
            f"max_weight must be an int >= 1 (e.g. the most examples a shop may report), got {self.max_weight!r}",
        )
        _require(
            isinstance(self.min_clients, int) and 2 <= self.min_clients <= self.max_clients,
            f"min_clients must be an int in [2, max_clients={self.max_clients}], got {self.min_clients!r}",
        )
        _require(
            self.degree is None or (isinstance(self.degree, int) and self.degree >= 2 and self.degree % 2 == 0),
            f"degree must be None (automatic) or an even int >= 2, got {self.degree!r}",
        )
        _require(
            self.max_clients * self.max_weight <= UINT32_MAX,
            f"max_clients * max_weight = {self.max_clients * self.max_weight} exceeds 2**32 - 1, so the "
            "total weight could overflow: lower max_weight or max_clients",
        )
        best = max_frac_bits(self.max_clients, self.clip, self.max_weight)
        if self.frac_bits is None:
            _require(
                best is not None,
                f"no fixed-point precision fits: max_clients={self.max_clients} * max_weight={self.max_weight} "
                f"* clip={self.clip} exceeds 2**31 - 1 even with frac_bits=0; lower clip, max_weight or max_clients",
            )
            object.__setattr__(self, "frac_bits", best)
            return
        _require(
            isinstance(self.frac_bits, int) and 0 <= self.frac_bits <= MAX_FRAC_BITS,
            f"frac_bits must be None (automatic) or an int in [0, {MAX_FRAC_BITS}], got {self.frac_bits!r}",
        )
        bound = element_bound(self.clip, self.max_weight, self.frac_bits)
        _require(
            fits(self.max_clients, self.clip, self.max_weight, self.frac_bits),
            f"frac_bits={self.frac_bits} overflows: {self.max_clients} clients x ceil(max_weight={self.max_weight} "
            f"x clip={self.clip} x 2**{self.frac_bits}) = {self.max_clients * bound} > 2**31 - 1. "
            + (
                f"Use frac_bits <= {best} (or None for automatic)"
                if best is not None
                else "No frac_bits fits"
            )
            + ", or lower clip, max_weight or max_clients.",
        )

    @property
    def scale(self) -> float:
        """Fixed-point scale ``2**frac_bits``."""
        return 2.0 ** self.frac_bits  # type: ignore[operator]

    @property
    def masked_length(self) -> int:
        """Length of a masked input: the weighted update (the weight travels in the clear beside it)."""
        return self.vector_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
