"""Evaluate the reference predictors on the test period of one dataset.

Loads the events, splits them in time, builds the taxonomy from the training period and prints
persistence, popularity, first-order Markov and recency-weighted frequency on all test examples
and on the migrating ones. For data written by `fedinterest synth` it also prints the
Bayes-optimal accuracy the generating process implies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedinterest.common.atomic import atomic_write_text
from .data_args import add_data_arguments, add_task_arguments, load_options, task_config

NAME = "baselines"
HELP = "print baseline metrics (persistence, popularity, Markov, recency) for a dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_task_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from fedinterest.common.baselines import run_baselines
    from fedinterest.common.data import load_events
    from fedinterest.common.report import format_table
    from fedinterest.common.task import Taxonomy, prepare_task

    table = load_events(args.data, load_options(args))
    print(table.report.summary())
    taxonomy = Taxonomy.load(args.taxonomy) if args.taxonomy else None
    task = prepare_task(table, task_config(args), taxonomy=taxonomy)
    print(_split_line(task.split))
    print(task.summary())
    results = run_baselines(task.train, task.test)
    print()
    print(format_table(results))
    bayes = synthetic_bayes_accuracy(Path(args.data), task.split.test_start,
                                     task.split.end - task.config.window_seconds)
    if bayes is not None:
        print(f"\nBayes-optimal acc@1 of the generating process on the test period: {bayes:.3f}")
    if args.json:
        payload = {"data": str(args.data), "split": task.split.to_dict(), "baselines": results,
                   "bayes_optimal_acc@1": bayes}
        atomic_write_text(args.json, json.dumps(payload, indent=2))
    return 0


def synthetic_bayes_accuracy(data: Path, test_start: int, last_t: int | None = None) -> float | None:
    """The generator's Bayes-optimal acc@1 for the test period, if ``data`` is synthetic."""
    from fedinterest.simulations.synthetic import bayes_accuracy_since

    truth = data / "ground_truth.json" if data.is_dir() else None
    if truth is None or not truth.is_file():
        return None
    return bayes_accuracy_since(json.loads(truth.read_text()), test_start, last_t)


def _split_line(split) -> str:
    from datetime import datetime, timezone

    def day(ts: int) -> str:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")

    return (f"split (UTC): train {day(split.start)} .. {day(split.val_start)}, "
            f"validation .. {day(split.test_start)}, test .. {day(split.end)}")
