"""Predict each user's next interests with an exported federated adapter.

Loads the export (peft adapter, taxonomy, model card) on its backbone, takes every user's
latest history in --data (up to --at, default: the end of the data) and writes, per user, the
top-5 next categories with their probabilities and the probability of migrating (1 - p of the
current interest) to --out, atomically (``fedinterest.deploy.predict``, shared with ``serve``).
"""

from __future__ import annotations

import argparse

from .data_args import add_data_arguments, load_options

NAME = "predict"
HELP = "top-5 next categories and migration probability per user, from an exported adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="an export directory (runs/.../federation/export) or its adapter/ folder")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="CSV", help="predictions file to write")
    parser.add_argument("--at", type=int, metavar="UNIX_SECONDS",
                        help="prediction time (default: the end of the day holding the last event)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from fedinterest.deploy.predict import write_predictions

    write_predictions(args.adapter, args.data, load_options(args), args.out, args.at, args.device)
    return 0
