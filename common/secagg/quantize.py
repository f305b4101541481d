"""Fixed-point encoding of a weighted update into Z_2^32, and decoding of the aggregate.

Encoding (client ``i``, integer weight ``w_i`` in ``[0, W]``, update ``x_i`` of length ``d``)::

    x̄ = clip(x_i, -c, c)
    v = w_i * x̄ * 2**f                       (float64)
    q = floor(v) + [u < v - floor(v)]          u ~ U[0, 1), 53-bit: stochastic rounding
    encoded = (q mod 2**32, w_i)               uint32, length d + 1

Overflow is impossible: ``|q| <= B = ceil(W * c * 2**f)`` elementwise, and the configuration
requires ``n * B <= 2**31 - 1`` and ``n * W <= 2**32 - 1`` for ``n = max_clients``. So the sum of
any ``m <= n`` encodings, read as int32 (update part) and uint32 (weight), is the exact integer
sum.

Error bound (per element of the weighted mean). Let ``μ = Σ w_i x̄_i / W_tot`` over the
contributing clients, ``W_tot = Σ w_i > 0`` and ``m₊`` the number of them with ``w_i > 0``. Each
rounding error ``q - v`` lies in ``(-1, 1)`` (and is 0 when ``w_i = 0``), hence the decoded mean
``μ̂`` satisfies, deterministically and elementwise::

    |μ̂ - μ| < m₊ / (2**f * W_tot) <= 2**-f

(``W_tot >= m₊`` since weights are integers), up to float64 rounding (relative ~1e-16), and
``E[μ̂] = μ`` (stochastic rounding is unbiased to 2**-53). Clipping is a separate, deliberate
bias: ``μ`` is the mean of the *clipped* updates.
"""

from __future__ import annotations

import numbers

import numpy as np

from .config import SecAggConfig
from .primitives import KEY_BYTES, Randomness, uniform_floats


def check_weight(weight: int, config: SecAggConfig) -> int:
    """``weight`` as a Python int in ``[0, max_weight]``, or a ``ValueError`` that says why not."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight != int(weight):
        raise ValueError(f"weight must be an integer (e.g. the number of examples), got {weight!r}")
    weight = int(weight)
    if not 0 <= weight <= config.max_weight:
        raise ValueError(
            f"weight {weight} is outside [0, max_weight={config.max_weight}]: cap it at max_weight "
            "or raise max_weight in SecAggConfig"
        )
    return weight


def quantize(update: np.ndarray, weight: int, config: SecAggConfig, randomness: Randomness) -> np.ndarray:
    """Encode ``weight * clip(update)`` and ``weight`` as a uint32 vector of length ``d + 1``."""
    weight = check_weight(weight, config)
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    if x.size != config.vector_length:
        raise ValueError(f"update has {x.size} elements, config.vector_length is {config.vector_length}")
    if not np.all(np.isfinite(x)):
        raise ValueError("update contains NaN or infinite values; fix the training step before aggregating")
    v = np.clip(x, -config.clip, config.clip) * float(weight) * config.scale
    low = np.floor(v)
    q = low + (uniform_floats(randomness(KEY_BYTES), v.size) < (v - low))
    encoded = np.empty(config.masked_length, dtype=np.uint32)
    encoded[:-1] = q.astype(np.int64).astype(np.uint32)  # two's complement mod 2**32
    encoded[-1] = weight
    return encoded


def decode(aggregate: np.ndarray, config: SecAggConfig) -> tuple[np.ndarray, int]:
    """``(Σ w_i x̄_i, Σ w_i)`` from the unmasked sum of encodings (float64 vector, int)."""
    aggregate = np.asarray(aggregate, dtype=np.uint32)
    weighted_sum = aggregate[:-1].view(np.int32).astype(np.float64) / config.scale
    return weighted_sum, int(aggregate[-1])
