"""The ``fedinterest`` console script: one subcommand per module, dispatched here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fedinterest.common.config import ConfigError

from . import audit, baselines, budget, keys, ledger, node, platform, predict, serve, simulate, sweep, synth, train_local

#: Subcommand modules; each has NAME, HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = (synth, baselines, train_local, ledger, budget, keys, simulate, sweep, predict, serve, audit, platform, node)

#: Exit status for bad input or configuration (clear message, no traceback).
EXIT_USAGE = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, given ``command``, of that one alone (the others are listed by
    name and help, without their arguments, whose defaults may need torch)."""
    parser = argparse.ArgumentParser(
        prog="fedinterest",
        description="Privacy-preserving federated prediction of e-commerce interest migration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        each = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        if command is None or module.NAME == command:
            module.add_arguments(each)
        each.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if not a.startswith("-")), "")  # an unknown name: argparse says so
    args = build_parser(named).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"fedinterest {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from fedinterest.common.data.schema import DataError

        if not isinstance(exc, (DataError, ConfigError)):
            raise
        print(f"fedinterest {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
