"""Generate synthetic shops with known interest-migration structure.

Writes one Taobao-layout events CSV per shop, categories.csv (English names) and items.csv
(titles) unless ``--realistic`` makes categories anonymous, ground_truth.json (process settings, shop specialisation and the Bayes-optimal
next-interest accuracy) and the dataset.json manifest that other commands read.
"""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "generate synthetic shops (Taobao layout) with a ground-truth report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fedinterest.simulations.synthetic import SynthConfig

    d = SynthConfig()
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--shops", type=int, default=d.shops, help=f"number of shops (default {d.shops})")
    parser.add_argument("--users", type=int, default=d.users, help=f"users over all shops (default {d.users})")
    parser.add_argument("--days", type=int, default=d.days, help=f"days simulated (default {d.days})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--migration-rate", type=float, default=None,
                        help=f"mean nightly chance of moving to a new interest (default {d.migration_rate})")
    parser.add_argument("--shop-skew", type=float, default=d.shop_skew,
                        help=f"Dirichlet concentration of shops over interest chains; small = specialised "
                             f"(default {d.shop_skew})")
    parser.add_argument("--focus", type=float, default=None,
                        help=f"share of a day's events on the current interest (default {d.focus})")
    parser.add_argument("--realistic", action="store_true",
                        help="shops as hard as real logs: a long tail of anonymous numeric categories (the "
                             "top 50 hold about half the engagement), ~85%% migrating labels, out-of-window rows")


def run(args: argparse.Namespace) -> int:
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    settings = dict(shops=args.shops, users=args.users, days=args.days, seed=args.seed, shop_skew=args.shop_skew)
    if args.migration_rate is not None:
        settings["migration_rate"] = args.migration_rate
    if args.focus is not None:
        settings["focus"] = args.focus
    config = SynthConfig.realistic(**settings) if args.realistic else SynthConfig(**settings)
    data = write_synthetic(args.out, config)
    truth = data.ground_truth
    print(f"wrote {len(data.events):,} events for {config.users:,} users in {config.shops} shops to {args.out}")
    for shop, info in truth["shops"].items():
        top = sorted(info["chain_weights"].items(), key=lambda kv: -kv[1])[:2]
        print(f"  {shop}: {info['users']:,} users, {info['events']:,} events, mostly "
              + ", ".join(f"{name} ({w:.0%})" for name, w in top))
    print(f"daily migration rate {truth['daily_migration_rate']:.3f}; Bayes-optimal next-interest "
          f"acc@1 {truth['bayes_optimal']['accuracy']:.3f}")
    if config.tail_categories:
        print(f"long tail: {config.tail_categories:,} anonymous categories; {config.outliers} events moved "
              "outside the window (loaders drop and report them)")
    return 0
