"""A shop's SecAgg identity key and the federation's roster: make, collect, compare.

The merchant runs ``keys new`` once and sends the printed public key to the platform; the platform
collects every shop's key with ``keys roster`` and publishes the file; every merchant pins a copy
(the SuperNode's ``roster`` node config) and compares ``keys fingerprint`` with the other
merchants out of band before joining. A server that edits the roster or substitutes keys is then
refused by the shops.
"""

from __future__ import annotations

import argparse

NAME = "keys"
HELP = "make a shop's identity key, build the roster, print its fingerprint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = sub.add_parser("new", help="make this shop's Ed25519 identity key and print its public key")
    new.add_argument("--state-dir", required=True, metavar="DIR", help="the shop's state directory (keeps the key)")
    roster = sub.add_parser("roster", help="write the roster of the shops' public keys")
    roster.add_argument("--out", required=True, metavar="FILE", help="roster file to write")
    roster.add_argument("shops", nargs="+", metavar="NAME=PUBKEY", help="each shop's name and 64-hex public key")
    fingerprint = sub.add_parser("fingerprint", help="print a roster's SHA-256 fingerprint to compare out of band")
    fingerprint.add_argument("roster", metavar="FILE")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedinterest.common.config import ConfigError
    from fedinterest.common.secagg import Identity, Roster
    from fedinterest.common.secagg.identity import IDENTITY_FILE

    if args.action == "new":
        path = Path(args.state_dir) / IDENTITY_FILE
        Identity.generate().save(path)
        print(f"identity key written to {path} (keep it private; back it up with the shop's ledger)")
        print(f"public key: {Identity.load(path).public_key.hex()}")
        return 0
    if args.action == "roster":
        keys = {}
        for item in args.shops:
            name, _, key = item.partition("=")
            try:
                raw = bytes.fromhex(key)
            except ValueError:
                raise ConfigError(f"keys roster: {item!r} is not NAME=PUBKEY with 64 hex digits") from None
            if not name or name in keys:
                raise ConfigError(f"keys roster: {item!r}: each shop needs one distinct name")
            keys[name] = raw
        roster = Roster(keys)
        roster.save(args.out)
        print(f"roster of {len(roster)} shops written to {args.out}; fingerprint {roster.fingerprint()}")
        return 0
    print(Roster.load(args.roster).fingerprint())
    return 0
