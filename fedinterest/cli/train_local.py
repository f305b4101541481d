"""Train one shop's adapter on its own data, exactly as its federated client would.

Runs R rounds of local training (DP-SGD with the shop's privacy ledger, or a labelled
non-private reference run), then prints the model's test metrics beside the baselines on the
same test examples.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from fedinterest.common.atomic import atomic_write_text
from .data_args import add_data_arguments, add_task_arguments, load_options, task_config
from .model_args import add_model_arguments, add_privacy_arguments, model_config, privacy_config, train_config

NAME = "train-local"
HELP = "train one shop's adapter locally (DP or non-private) and compare it with the baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--shop", metavar="NAME", help="keep only this merchant_id (e.g. shop_00 of synthetic data)")
    add_task_arguments(parser)
    add_model_arguments(parser)
    add_privacy_arguments(parser)
    parser.add_argument("--rounds", type=int, default=1, help="local rounds to run (default 1)")
    parser.add_argument("--max-train-per-user", type=int,
                        help="use at most this many training examples of each customer (a keyed choice that depends "
                             "on that customer alone; default all)")
    parser.add_argument("--max-test", type=int, help="evaluate on at most this many test examples (local metrics only)")
    parser.add_argument("--state", metavar="DIR", help="state directory for caches and the pointer to the data's "
                        "privacy ledger (default .fedinterest/train-local/<data>-<shop>); the ledger itself is the "
                        "data's, in $FEDINTEREST_HOME (default ~/.fedinterest), whatever the state directory")
    parser.add_argument("--reset-ledger", action="store_true",
                        help="start this data's privacy accounting over from zero: recorded in the ledger as a reset "
                             "and shown by `fedinterest ledger show` forever; only if no earlier release reached "
                             "anyone")
    parser.add_argument("--raise-budget", action="store_true",
                        help="accept an --epsilon above every budget recorded for this data (recorded in the ledger); "
                             "without it a raised budget is refused")
    parser.add_argument("--seed", type=int, default=None,
                        help="make the run reproducible (sampling, noise, data subsets): for experiments only; "
                             "by default DP noise and sampling come from the OS CSPRNG")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from fedinterest.client.shop import LocalShop
    from fedinterest.common.baselines import run_baselines
    from fedinterest.common.config import ConfigError
    from fedinterest.common.data import load_events
    from fedinterest.common.report import format_table
    from fedinterest.common.task import Taxonomy

    if args.rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    table = load_events(args.data, load_options(args))
    print(table.report.summary())
    if args.shop:
        table = _one_shop(table, args.shop)
    privacy = privacy_config(args)
    state = Path(args.state or default_state_dir(args.data, args.shop))
    taxonomy = Taxonomy.load(args.taxonomy) if args.taxonomy else None
    shop = LocalShop(
        table, state_dir=state, privacy=privacy, train=train_config(args), model=model_config(args, args.seed or 0),
        task=task_config(args), taxonomy=taxonomy, max_train_per_user=args.max_train_per_user,
        max_test_examples=args.max_test,
        seed=args.seed, statistics_seed=args.seed, reset_ledger=args.reset_ledger, raise_budget=args.raise_budget,
    )
    print(shop.task.summary())
    print("label space: " + {"given": f"published taxonomy {args.taxonomy}",
                             "dp-top-k": f"top {shop.task.taxonomy.n_classes - 1} categories by this shop's "
                                         "noised engagement (one DP release, in the ledger)"}.get(
        shop.label_space, "top categories of this shop's data (NON-PRIVATE run)"))
    print(f"training on {len(shop.train_data):,} examples, testing on {len(shop.test_examples):,}")
    if not privacy.private:
        print(f"privacy: {privacy.describe()}")
    else:
        print(f"privacy: DP ε={privacy.epsilon:g} {shop.privacy_terms().describe()}")
        print("randomness: " + ("OS CSPRNG, fresh each step" if args.seed is None
                                else f"seeded ({args.seed}): reproducible, for experiments only, never for deployment"))
    if shop.ledger is not None:
        print(f"ledger: {shop.ledger.path}")
    rounds = []
    for r in range(1, args.rounds + 1):
        seed = None if args.seed is None else args.seed * 1000 + r
        outcome = shop.train_round(total_rounds=args.rounds, seed=seed)
        if outcome.declined:
            print(f"round {r}: declined: {outcome.reason}")
            break
        s = outcome.stats
        spent = "ε not applicable (non-private)" if outcome.epsilon is None else f"ε spent {outcome.epsilon:.3f}"
        if r == 1 and shop.ledger is not None:
            print(f"privacy plan: {shop.ledger.plan.describe()}")
        print(f"round {r}/{args.rounds}: loss {s.mean_loss:.3f}, {s.steps} steps, {s.samples:,} samples, "
              f"{s.seconds:.0f} s, {spent}")
        rounds.append({"round": r, "loss": s.mean_loss, "steps": s.steps, "seconds": s.seconds, "epsilon": outcome.epsilon})
    label = f"fedinterest [{privacy.label()}]"
    results = {label: shop.evaluate(), **run_baselines(shop.task.train, shop.test_examples)}
    print()
    print(format_table(results))
    if args.json:
        terms = shop.ledger.terms if shop.ledger is not None else None
        atomic_write_text(args.json, json.dumps({
            "privacy": privacy.describe(), "unit": terms.unit if terms else None,
            "delta": terms.delta if terms else None, "accountant": terms.accountant if terms else None,
            "label_space": shop.label_space, "rounds": rounds, "results": results}, indent=2))
    return 0


def default_state_dir(data: str, shop: str | None) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).resolve().name) + (f"-{shop}" if shop else "")
    return Path(".fedinterest") / "train-local" / name


def _one_shop(table, shop: str):
    from fedinterest.common.data.schema import DataError
    from fedinterest.simulations.partition import partition_events

    if not table.has_merchants:
        raise DataError(f"{table.report.source}: has no merchant_id, so --shop cannot select one")
    shops = partition_events(table, method="natural")
    if shop not in shops:
        raise DataError(f"--shop {shop}: not in {table.report.source}; shops are {', '.join(sorted(shops)[:10])}")
    return shops[shop]
