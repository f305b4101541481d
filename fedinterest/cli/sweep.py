"""Choose a privacy budget: a grid of federated simulations, the privacy-utility plot and a recommendation.

Every point (ε, unit, shops, rounds, α, seed) is a full ``simulate`` run (DP, SecAgg+) on the
same data, run as a Ray task: on a local Ray instance sized to this machine, or on an existing
cluster with ``--ray-address auto|HOST:PORT``. Points already finished in ``--out`` are reused, so
an interrupted sweep continues and a repeated one returns at once. Simulation settings are the
demo's unless overridden after ``--``, e.g. ``fedinterest sweep --epsilon 1,8,inf -- --backbone tiny``.
Writes sweep.csv, sweep.json, privacy_utility.png and recommendation.txt to ``--out``.
"""

from __future__ import annotations

import argparse
import math

NAME = "sweep"
HELP = "sweep ε (and shops, unit, rounds, skew, seeds) over federated simulations; plot and recommend a budget"

#: The demo's simulation settings (as `make demo`): each point is sized like the demo unless overridden.
DEMO_SETTINGS = ["--lora-layers", "top1", "--max-length", "48", "--batch-size", "128", "--physical-batch-size", "256",
                 "--lr", "0.2", "--epochs", "2", "--max-train-per-user", "6", "--server-lr", "1.0", "--eval-per-user", "1",
                 "--central-test", "1500"]


def _list(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def _epsilon(text: str) -> float:
    value = float(text)  # "inf" parses: the non-private federation
    if not value > 0:
        raise ValueError(text)
    return value


def _unit(text: str) -> str:
    if text not in ("user", "example"):
        raise ValueError(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("grid")
    group.add_argument("--epsilon", type=_list(_epsilon), default=[1.0, 2.0, 4.0, 8.0, math.inf], metavar="LIST",
                       help="budgets per privacy unit; inf is the non-private federation (default 1,2,4,8,inf)")
    group.add_argument("--unit", type=_list(_unit), default=["user"], metavar="LIST", help="user and/or example")
    group.add_argument("--shops", type=_list(int), default=[5], metavar="LIST", help="numbers of shops (default 5)")
    group.add_argument("--rounds", type=_list(int), default=[10], metavar="LIST", help="rounds (default 10)")
    group.add_argument("--alpha", type=_list(float), default=[0.5], metavar="LIST",
                       help="Dirichlet shop-size skew of --data (default 0.5)")
    group.add_argument("--seeds", type=int, default=2, help="seeds per point, for error bars (default 2)")
    group = parser.add_argument_group("sweep")
    group.add_argument("--data", metavar="PATH", help="events to split into shops (default: the synthetic shops)")
    group.add_argument("--partition", choices=("auto", "natural", "dirichlet", "iid"), default="auto")
    group.add_argument("--out", default="runs/sweep", metavar="DIR", help="sweep folder (default runs/sweep)")
    group.add_argument("--tolerance", type=float, default=0.01,
                       help="utility loss against non-private that a recommended ε may cost (default 0.01)")
    group.add_argument("--metric", default="mig_hr@5", choices=("mig_hr@5", "hr@5", "acc@1", "mig_acc@1"))
    group.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (auto or HOST:PORT); "
                       "default: a local Ray instance sized to this machine")
    group.add_argument("--cpus-per-point", type=float, help="CPUs each point takes (default: all of this machine's)")
    group.add_argument("--fresh", action="store_true", help="discard finished points in --out and start again")
    parser.add_argument("simulate_args", nargs=argparse.REMAINDER, metavar="-- SIMULATE-ARGS",
                        help="settings for every point's `simulate`, after the demo's (e.g. -- --backbone tiny)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedinterest.common.config import ConfigError
    import sys

    from fedinterest.simulations.sweep import (
        SweepFailed, check_settings, grid, recommendation_text, run_sweep, summarise, synthetic_shops, write_outputs,
    )

    extra = list(args.simulate_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.seeds < 1:
        raise ConfigError("sweep: --seeds must be >= 1")
    if any(s < 3 for s in args.shops):
        raise ConfigError("sweep: every --shops value must be >= 3 (secure aggregation needs three)")
    out = Path(args.out)
    check_settings(out, {"simulate_args": [*DEMO_SETTINGS, *extra], "data": args.data,
                         "partition": args.partition}, args.fresh)
    # every point of a shop count sees the same data: --data, or the default synthetic shops written once
    data = {s: ["--data", args.data, "--partition", args.partition] if args.data
            else ["--data", str(synthetic_shops(out, s)), "--partition", "natural"] for s in args.shops}
    points = grid(args.epsilon, args.unit, args.shops, args.rounds, args.alpha, args.seeds)
    try:
        rows = run_sweep(points, lambda p: [*DEMO_SETTINGS, *data[p.shops], *extra], out,
                         ray_address=args.ray_address, cpus_per_point=args.cpus_per_point)
    except SweepFailed as exc:
        print(f"fedinterest sweep: {exc}", file=sys.stderr)
        return 1
    summary = summarise(rows, args.tolerance, args.metric)
    paths = write_outputs(rows, summary, out)
    print()
    for group in summary["groups"]:
        print(f"{group['shops']} shops, per {group['unit']}: {args.metric} by ε (mean ± SE over seeds)")
        for c in group["curve"]:
            se = "" if math.isnan(c[f"{args.metric}_se"]) else f" ± {c[f'{args.metric}_se']:.3f}"
            print(f"  ε={c['epsilon']:<5g} {c[args.metric]:.3f}{se}   (best baseline {c[f'baseline_{args.metric}']:.3f})")
    print()
    print(recommendation_text(summary))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0
