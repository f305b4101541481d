"""Fixed-point encoding of a weighted update into Z_2^32, and decoding and bounding of the aggregate.

Encoding (client ``i``, public integer weight ``w_i`` in ``[1, W]``, update ``x_i`` of length ``d``)::

    x̄ = clip(x_i · min(1, N / ‖x_i‖₂), -c, c)  (N = norm_bound, when set)
    v = w_i * x̄ * 2**f                       (float64)
    q = floor(v) + [u < v - floor(v)]          u ~ U[0, 1), 53-bit: stochastic rounding
    encoded = q mod 2**32                      uint32, length d

The weight is not encoded: it travels in the clear beside the masked vector, so the server checks
each client's weight on its own and learns the total as the sum of the survivors' weights.

Overflow is impossible for honest inputs: ``|q| <= B = ceil(W * c * 2**f)`` elementwise, and the
configuration requires ``n * B <= 2**31 - 1`` for ``n = max_clients``. So the sum of any
``m <= n`` encodings, read as int32, is the exact integer sum.

Error bound (per element of the weighted mean). Let ``μ = Σ w_i x̄_i / W_tot`` over the
contributing clients and ``W_tot = Σ w_i``. Each rounding error ``q - v`` lies in ``(-1, 1)``,
hence the decoded mean ``μ̂`` satisfies, deterministically and elementwise::

    |μ̂ - μ| < m / (2**f * W_tot) <= 2**-f

(``W_tot >= m`` since weights are positive integers), up to float64 rounding, and ``E[μ̂] = μ``
(stochastic rounding is unbiased to 2**-53). Clipping is a separate, deliberate bias: ``μ`` is the
mean of the *clipped* updates.

A malicious client can put anything in its masked vector; masking hides it until the sum. The
server therefore projects the sum onto what honest inputs can give (:func:`bound_sum`): the clip
box and, with ``norm_bound``, the ball ``‖Σ w x‖ ≤ W_tot · N``. One client can then move the mean
anywhere inside that region and no further: at most ``2N`` in L2 (``2c`` per element), whatever
the number of shops, where an honest one moves it by at most ``2N · w_i / W_tot``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .config import SecAggConfig
from .primitives import KEY_BYTES, Randomness, uniform_floats


def check_weight(weight: int, config: SecAggConfig) -> int:
    """``weight`` as a Python int in ``[1, max_weight]``, or a ``ValueError`` that says why not."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight != int(weight):
        raise ValueError(f"weight must be an integer (e.g. the number of examples), got {weight!r}")
    weight = int(weight)
    if not 1 <= weight <= config.max_weight:
        raise ValueError(
            f"weight {weight} is outside [1, max_weight={config.max_weight}]: cap it at max_weight "
            "or raise max_weight in SecAggConfig"
        )
    return weight


def bounded(update: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """``update`` scaled to L2 norm at most ``norm_bound`` (when set), then clipped to the clip box."""
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    if config.norm_bound is not None:
        norm = float(np.linalg.norm(x))
        if norm > config.norm_bound:
            x = x * (config.norm_bound / norm)
    return np.clip(x, -config.clip, config.clip)


def quantize(update: np.ndarray, weight: int, config: SecAggConfig, randomness: Randomness) -> np.ndarray:
    """Encode ``weight * bounded(update)`` as a uint32 vector of length ``d``."""
    weight = check_weight(weight, config)
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    if x.size != config.vector_length:
        raise ValueError(f"update has {x.size} elements, config.vector_length is {config.vector_length}")
    if not np.all(np.isfinite(x)):
        raise ValueError("update contains NaN or infinite values; fix the training step before aggregating")
    v = bounded(x, config) * float(weight) * config.scale
    low = np.floor(v)
    q = low + (uniform_floats(randomness(KEY_BYTES), v.size) < (v - low))
    return q.astype(np.int64).astype(np.uint32)  # two's complement mod 2**32


def decode(aggregate: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """``Σ w_i x̄_i`` from the unmasked sum of encodings (float64 vector)."""
    aggregate = np.asarray(aggregate, dtype=np.uint32)
    return aggregate.view(np.int32).astype(np.float64) / config.scale


def bound_sum(weighted_sum: np.ndarray, total_weight: int, contributors: int,
              config: SecAggConfig) -> tuple[np.ndarray, bool]:
    """The sum projected onto what honest inputs can give, and whether it had to be moved.

    Honest sums lie in the clip box ``|S_e| <= W·c`` and, with ``norm_bound``, in the ball
    ``‖S‖ <= W·N`` (plus one fixed-point unit per contributor of stochastic rounding); a sum outside
    is clipped to the box and scaled into the ball. Projection instead of discarding: one client's
    crafted input can move the mean within the region, but never abort the round.
    """
    slack = contributors / config.scale
    box = total_weight * config.clip + slack
    projected = np.clip(weighted_sum, -box, box)
    moved = bool(np.any(projected != weighted_sum))
    if config.norm_bound is not None:
        radius = total_weight * config.norm_bound + slack * np.sqrt(max(weighted_sum.size, 1))
        norm = float(np.linalg.norm(projected))
        if norm > radius:
            projected = projected * (radius / norm)
            moved = True
    return projected, moved
