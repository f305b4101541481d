"""How far can one malicious shop move the securely aggregated mean? Measured on the real SecAgg+ round.

Masking hides each input until the sum, so no per-input bound can be checked; the server projects
the unmasked sum onto what honest shops can give (the clip box ``|S_e| <= W·c`` and the ball
``‖S‖ <= W·N``, ``common.secagg.quantize.bound_sum``). This script runs rounds where shop 0 encodes a
crafted vector of its choice (any uint32 vector: it need not clip, quantize or even stay in range)
with several strategies, from blind (huge values along a direction) to omniscient (it knows the
others' sum and aims the mean at a point of its choice), and prints the largest shift of the
released mean against the round where it sent zeros, in units of the norm bound ``N``, beside the
largest shift an honest shop can cause (``2N·w/W``) and the same attack with the clip box alone::

    python benchmarks/poisoning_bound.py [--shops 5 20 100] [--dim 4096] [--norm 1.0] [--clip 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fedinterest.common.secagg.client as client_module  # noqa: E402
from fedinterest.common.secagg import SecAggConfig, run_round  # noqa: E402


@contextlib.contextmanager
def crafted_input(vector: np.ndarray):
    """Shop 0 (the only one whose update is all zeros) encodes ``vector`` instead of quantizing."""
    real = client_module.quantize

    def quantize(update, weight, config, randomness):
        if not np.any(update):
            return vector.astype(np.int64).astype(np.uint32)
        return real(update, weight, config, randomness)

    client_module.quantize = quantize
    try:
        yield
    finally:
        client_module.quantize = real


def strategies(honest_sum: np.ndarray, config: SecAggConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crafted encodings (integers, wrapped mod 2**32 by the encoder) for shop 0, by name."""
    d, n, scale = honest_sum.size, config.max_clients, config.scale
    corner = config.clip * rng.choice([-1.0, 1.0], d)
    unit = rng.normal(size=d)
    unit /= np.linalg.norm(unit)

    def aim(mean: np.ndarray) -> np.ndarray:  # omniscient: the released mean becomes ``mean`` (if allowed)
        return np.round((mean * n - honest_sum) * scale)

    return {
        "huge along a corner": np.sign(corner) * 2.0**30,
        "huge random": rng.integers(-(2**31), 2**31, d).astype(np.float64),
        "aim at a box corner": aim(corner),
        "aim far along a direction": aim(unit * 4 * (config.norm_bound or 1.0)),
        "aim just past the ball, away from the honest mean": aim(
            -honest_sum / max(np.linalg.norm(honest_sum), 1e-12) * 1.01 * (config.norm_bound or 1.0)),
    }


def measure(shops: int, dim: int, norm: float | None, clip: float, seed: int) -> tuple[float, float, str]:
    """(largest shift / N, largest L∞ shift / clip, the strategy that got it) over the strategies."""
    config = SecAggConfig(vector_length=dim, max_clients=shops, clip=clip, norm_bound=norm)
    rng = np.random.default_rng(seed)
    honest = [rng.normal(0, 1, dim) for _ in range(shops)]
    honest = [x * (0.8 * (norm or 1.0) / np.linalg.norm(x)) for x in honest]
    honest[0] = np.zeros(dim)
    reference = run_round(honest, None, config, seed=seed).result.mean
    best = (0.0, 0.0, "")
    for name, vector in strategies(np.sum(honest[1:], axis=0), config, rng).items():
        with crafted_input(vector):
            mean = run_round(honest, None, config, seed=seed).result.mean
        shift = mean - reference
        l2 = float(np.linalg.norm(shift)) / (norm or 1.0)
        if l2 > best[0]:
            best = (l2, float(np.abs(shift).max()) / clip, name)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shops", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--dim", type=int, default=4096, help="parameters per update (default 4096)")
    parser.add_argument("--norm", type=float, default=1.0, help="the round's L2 norm bound N (default 1)")
    parser.add_argument("--clip", type=float, default=0.5, help="the per-element clip (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.shops) < 3 or args.dim < 1 or args.norm <= 0 or args.clip <= 0:
        parser.error("--shops >= 3, --dim >= 1, --norm > 0 and --clip > 0")
    print(f"one malicious shop of n, d = {args.dim}, norm bound N = {args.norm:g}, clip c = {args.clip:g}; "
          "shift of the released mean against the round where it sent zeros")
    print(f"{'shops':>5} {'bounded: L2/N':>13} {'L∞/c':>6} {'honest max L2/N':>15} "
          f"{'box only: L2/N':>14} {'L∞/c':>6}  strongest strategy")
    for shops in args.shops:
        l2, linf, name = measure(shops, args.dim, args.norm, args.clip, args.seed)
        box_l2, box_linf, _ = measure(shops, args.dim, None, args.clip, args.seed)
        print(f"{shops:>5} {l2:>13.3f} {linf:>6.3f} {2 / shops:>15.3f} {box_l2 * 1.0 / args.norm:>14.2f} "
              f"{box_linf:>6.3f}  {name}", flush=True)
    print("bounded: the sum projected onto the clip box and the ball Σw·N; documented bound 2N in L2, 2c per element")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
