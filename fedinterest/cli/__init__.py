"""The ``fedinterest`` console script: one subcommand per module, dispatched here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fedinterest.common.config import ConfigError
from fedinterest.common.data.schema import DataError
from . import audit, baselines, budget, keys, ledger, node, platform, predict, serve, simulate, sweep, synth, train_local

#: Subcommand modules; each has NAME, HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = (synth, baselines, train_local, ledger, budget, keys, simulate, sweep, predict, serve, audit, platform, node)

#: Exit status for bad input or configuration (clear message, no traceback).
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedinterest",
        description="Privacy-preserving federated prediction of e-commerce interest migration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (DataError, ConfigError) as exc:
        print(f"fedinterest {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fedinterest {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
