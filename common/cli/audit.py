"""Audit a shop's DP-SGD empirically: a one-run canary audit beside the ε it claims.

About 1,000 canaries (users with rare histories and random labels, or single examples at
example level) are each included with probability ½ in one shop; the shop trains once exactly
as a federated client does, and every canary is scored from the shop's update (white-box) and
from its loss (black-box). The guesses give an ε lower bound at 95% confidence (Steinke, Nasr,
Jagielski 2023), printed beside the claimed ε and the accountant's ε. A bound above the claim is
a bug; `--non-private` shows the audit's power on a run with no protection.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .data_args import add_task_arguments, task_config

NAME = "audit"
HELP = "measure an ε lower bound with canaries (one-run audit) beside the claimed ε"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="the shop's events (default: a synthetic shop)")
    parser.add_argument("--format", default=None, help="format of --data (default: detect)")
    parser.add_argument("--shop", metavar="NAME", help="keep only this merchant_id of --data (default with "
                        "synthetic data: shop_02)")
    parser.add_argument("--epsilon", default="1,8", metavar="LIST",
                        help="claimed budgets to audit, comma-separated (default 1,8)")
    parser.add_argument("--unit", default="user,example", metavar="LIST",
                        help="privacy units to audit: user, example or both (default user,example)")
    parser.add_argument("--non-private", action="store_true", help="also audit a non-private run (the audit's power)")
    parser.add_argument("--canaries", type=int, default=1000, help="canaries per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="local rounds per run (default 2)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per round (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="expected batch size (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--backbone", default="tiny", help="backbone (default tiny)")
    parser.add_argument("--seed", type=int, default=None,
                        help="reproducible runs (experiments only; default: the OS CSPRNG)")
    parser.add_argument("--out", default="runs/audit", metavar="DIR", help="report folder (default runs/audit)")
    add_task_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from common.atomic import atomic_write_json
    from common.config import ConfigError
    from common.data import LoadOptions, load_events
    from simulations.audit import AuditConfig, audit_table, run_audit

    epsilons = _numbers(args.epsilon, "--epsilon")
    units = [u.strip() for u in args.unit.split(",") if u.strip()]
    if not units or set(units) - {"user", "example"}:
        raise ConfigError(f"--unit: {args.unit!r}; use user, example or user,example")
    if args.canaries < 20:
        raise ConfigError("--canaries must be >= 20")
    out = Path(args.out)
    table = _shop_table(args, out, load_events, LoadOptions)
    runs = [(e, u) for u in units for e in epsilons] + ([(None, units[0])] if args.non_private else [])
    results = []
    for epsilon, unit in runs:
        config = AuditConfig(epsilon=epsilon, unit=unit, canaries=args.canaries, rounds=args.rounds,
                             epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             backbone=args.backbone, seed=args.seed)
        state = out / "state" / f"{unit}-eps{epsilon if epsilon is not None else 'inf'}"
        if state.exists():
            import shutil

            shutil.rmtree(state)  # each audited run starts from an empty ledger of its own
        results.append(run_audit(table, config, task_config(args), state_dir=state))
    print()
    print(audit_table(results))
    report = {"results": [r.to_dict() for r in results], "source": table.report.source}
    atomic_write_json(out / "report.json", report, indent=1)
    print(f"\nreport: {out / 'report.json'}")
    violations = [r for r in results if not r.consistent]
    if violations:
        print(f"fedinterest audit: {len(violations)} lower bound(s) above the claimed ε: a privacy bug")
        return 1
    return 0


def _numbers(text: str, flag: str) -> list[float]:
    from common.config import ConfigError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ConfigError(f"{flag}: every ε must be a positive number")
    return values


def _shop_table(args, out: Path, load_events, LoadOptions):
    from simulations.partition import partition_events

    if args.data is None:
        from simulations.synthetic import SynthConfig, write_synthetic

        source = out / "data"
        if not (source / "dataset.json").is_file():
            write_synthetic(source, SynthConfig())
        table, shop = load_events(source), args.shop or "shop_02"
    else:
        table, shop = load_events(args.data, LoadOptions(format=args.format)), args.shop
    if shop:
        from common.data.schema import DataError

        shops = partition_events(table, method="natural")
        if shop not in shops:
            raise DataError(f"--shop {shop}: not in {table.report.source}")
        table = shops[shop]
    return table
