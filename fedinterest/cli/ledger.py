"""Inspect a shop's privacy ledger: its budget, the ε spent after every round, what is left, and every
reset and raised budget ever recorded."""

from __future__ import annotations

import argparse

NAME = "ledger"
HELP = "show a shop's privacy ledger (spent ε per round, budget left)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print the ledger", description=__doc__)
    show.add_argument("--state", required=True, metavar="DIR",
                      help="the shop's state directory (it points to the data's ledger in the ledger home)")
    show.add_argument("--budget", type=float, help="budget to compare with (default: the one recorded)")


def run(args: argparse.Namespace) -> int:
    from fedinterest.client.ledger import BINDING_FILE, LEDGER_FILE, PrivacyLedger
    from fedinterest.common.data.schema import DataError
    from pathlib import Path

    state = Path(args.state)
    if not (state / BINDING_FILE).is_file() and not (state / LEDGER_FILE).is_file():
        raise DataError(f"{args.state}: no ledger here (no {BINDING_FILE} pointing to the data's ledger, no "
                        f"{LEDGER_FILE}); pass the shop's --state directory")
    print(PrivacyLedger.open(args.state).summary(args.budget))
    return 0
