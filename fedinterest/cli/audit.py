"""Audit a shop's DP-SGD and its noised releases empirically, each lower bound beside the ε it claims.

About 1,000 canaries (users with rare histories and random labels, or single examples at
example level) are each included with probability ½ in one shop; the shop trains once exactly
as a federated client does, and every canary is scored from the shop's update (white-box) and
from its loss (black-box). The guesses give an ε lower bound at 95% confidence (Steinke, Nasr,
Jagielski 2023), printed beside the claimed ε and the accountant's ε. A bound above the claim is
a bug; `--non-private` shows the audit's power on a run with no protection. Both DP engines
(``--engine opacus,fast``) are audited.

The evaluation and statistics releases are cheap, so they are audited with many runs
(``simulations.release_audit``): the worst-case neighbour D' = D less one customer, ``--runs``
noised releases on each, the optimal test, Clopper-Pearson limits. ``broken-evaluation`` is the
old shop-wide evaluation selection, kept only so the audit can show it flags it.

Every row prints its ceiling, the largest bound the audit could certify: a claim above it is
"no power" (the row could not show a violation), never silently consistent. Exit status 1 when a
product release is above its claim or the broken pipeline is not flagged.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .data_args import add_task_arguments, task_config

NAME = "audit"
HELP = "measure ε lower bounds (canaries for DP-SGD, many runs for releases) beside the claimed ε"
RELEASES = ("dp-sgd", "evaluation", "statistics", "engagement", "label-flows", "broken-evaluation")
ENGINES = ("opacus", "fast")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="the shop's events (default: a synthetic shop)")
    parser.add_argument("--format", default=None, help="format of --data (default: detect)")
    parser.add_argument("--shop", metavar="NAME", help="keep only this merchant_id of --data (default with "
                        "synthetic data: shop_02)")
    parser.add_argument("--epsilon", default="1,2", metavar="LIST",
                        help="claimed ε to audit, comma-separated: each DP-SGD run's budget and each release's "
                        "own charge (default 1,2: below the ceiling of 1,000 canaries)")
    parser.add_argument("--release", default="dp-sgd,evaluation,statistics,broken-evaluation", metavar="LIST",
                        help=f"what to audit, comma-separated, of {', '.join(RELEASES)} (statistics: engagement and "
                        "label-flows; default dp-sgd,evaluation,statistics,broken-evaluation)")
    parser.add_argument("--engine", default="opacus,fast", metavar="LIST",
                        help="DP-SGD engines to audit: opacus, fast or both (default opacus,fast)")
    parser.add_argument("--runs", type=int, default=50_000,
                        help="noised releases drawn on each neighbour in a release audit (default 50000)")
    parser.add_argument("--unit", default="user", metavar="LIST",
                        help="privacy units of the DP-SGD audits: user, example or both (default user; releases "
                        "are audited per user)")
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
    from fedinterest.common.atomic import atomic_write_json
    from fedinterest.common.config import ConfigError
    from fedinterest.common.data import LoadOptions, load_events
    from fedinterest.simulations.audit import AuditConfig, dp_sgd_rows, format_table, run_audit
    from fedinterest.simulations.release_audit import release_table

    epsilons = _numbers(args.epsilon, "--epsilon")
    units = _choices(args.unit, "--unit", ("user", "example"))
    releases = _choices(args.release, "--release", RELEASES)
    engines = _choices(args.engine, "--engine", ENGINES)
    if args.canaries < 20:
        raise ConfigError("--canaries must be >= 20")
    if args.runs < 1000:
        raise ConfigError(f"--runs {args.runs}: a release audit needs at least 1000 runs per neighbour")
    out = Path(args.out)
    table = _shop_table(args, out, load_events, LoadOptions)
    results = []
    if "dp-sgd" in releases:
        runs = [(e, u, g) for g in engines for u in units for e in epsilons]
        runs += [(None, units[0], engines[0])] if args.non_private else []
        for epsilon, unit, engine in runs:
            config = AuditConfig(epsilon=epsilon, unit=unit, canaries=args.canaries, rounds=args.rounds,
                                 epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                 backbone=args.backbone, seed=args.seed, engine=engine)
            state = out / "state" / f"{engine}-{unit}-eps{epsilon if epsilon is not None else 'inf'}"
            if state.exists():
                import shutil

                shutil.rmtree(state)  # each audited run starts from an empty ledger of its own
            results.append(run_audit(table, config, task_config(args), state_dir=state))
    released = _release_audits(table, releases, epsilons, args)
    print()
    print(format_table(dp_sgd_rows(results) + release_table(released)))
    report = {"results": [r.to_dict() for r in results], "releases": [r.to_dict() for r in released],
              "runs": args.runs, "source": table.report.source}
    atomic_write_json(out / "report.json", report, indent=1)
    print(f"\nreport: {out / 'report.json'}")
    if any("no power" in r.verdict for r in [*results, *released]):
        print("no power: a claim above the row's ceiling cannot be refuted by this audit, whatever the run leaks; "
              "raise --canaries (DP-SGD) or --runs (releases), or audit a smaller --epsilon")
    failed = [r for r in [*results, *released] if r.failed]
    if failed:
        print(f"fedinterest audit: {len(failed)} row(s) failed: a lower bound above the claim of a product "
              "pipeline (a privacy bug), or the broken pipeline not flagged (an audit without power)")
        return 1
    return 0


def _release_audits(table, releases: list[str], epsilons: list[float], args: argparse.Namespace) -> list:
    """Many-run audits of the requested release pipelines, at every claimed ε."""
    from fedinterest.simulations.release_audit import audit_release, audited_shop, describe

    statistics = ("engagement", "label-flows")
    names = [n for r in releases if r != "dp-sgd" for n in (statistics if r == "statistics" else (r,))]
    names = list(dict.fromkeys(names))
    if not names:
        return []
    shop = audited_shop(table, task_config(args))
    out = []
    for name in names:
        for epsilon in epsilons:
            seed = None if args.seed is None else args.seed * 1_000_003 + len(out)
            out.append(audit_release(shop, name, epsilon, runs=args.runs, seed=seed))
            print(describe(out[-1]))
    return out


def _choices(text: str, flag: str, allowed: tuple[str, ...]) -> list[str]:
    from fedinterest.common.config import ConfigError

    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise ConfigError(f"{flag}: {text!r}; use a comma-separated list of {', '.join(allowed)}")
    return values


def _numbers(text: str, flag: str) -> list[float]:
    from fedinterest.common.config import ConfigError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ConfigError(f"{flag}: every ε must be a positive number")
    return values


def _shop_table(args, out: Path, load_events, LoadOptions):
    from fedinterest.simulations.partition import partition_events

    if args.data is None:
        from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

        source = out / "data"
        if not (source / "dataset.json").is_file():
            write_synthetic(source, SynthConfig())
        table, shop = load_events(source), args.shop or "shop_02"
    else:
        table, shop = load_events(args.data, LoadOptions(format=args.format)), args.shop
    if shop:
        from fedinterest.common.data.schema import DataError

        shops = partition_events(table, method="natural")
        if shop not in shops:
            raise DataError(f"--shop {shop}: not in {table.report.source}")
        table = shops[shop]
    return table
