"""The platform's side of a live federation: make its directory, register shops, run it.

``init`` makes a CA and the SuperLink's certificate (the CA's key is then discarded, or written
to ``--ca-key-out`` outside the directory), the task and an empty roster; ``add-shop`` registers
a merchant's public keys (its ``public-keys.json``); ``start`` runs ``flower-superlink`` with TLS
and SuperNode authentication on loopback and the Fleet API proxy on the public address,
registers the shops' keys with it and runs the federation to an exported adapter. Run ``start`` again after a crash: it resumes from the last
checkpoint. Nothing runs without TLS unless ``init --insecure`` says so.
"""

from __future__ import annotations

import argparse

NAME = "platform"
HELP = "platform side of a live federation: init, add-shop, start"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="make the platform directory: CA, server certificate, task, empty roster")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--address", required=True, metavar="HOST:PORT",
                      help="where the SuperLink listens and merchants connect (e.g. fl.example.com:9092)")
    init.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="a host name or IP the server certificate is valid for (repeatable; default: the "
                           "address's host, or localhost and 127.0.0.1 for a local address)")
    task = init.add_mutually_exclusive_group(required=True)
    task.add_argument("--task-spec", metavar="JSON", help="the task as a task-spec file (a published taxonomy)")
    task.add_argument("--catalogue", metavar="PATH",
                      help="the platform's category list (category_id[,category_name] CSV, or one id per line; "
                           "or a dataset directory whose manifest names one): the shops choose the label space "
                           "from it privately. An events log is refused: it is customers' data, not a catalogue")
    init.add_argument("--start", metavar="DATE", help="the run's first day (e.g. 2025-09-01): the split's calendar "
                      "(default: the dataset manifest's window)")
    init.add_argument("--end", metavar="DATE", help="the day after the run's last day")
    init.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    init.add_argument("--min-shops", type=int, default=3, help="shops every round needs (default 3)")
    init.add_argument("--backbone", default="minilm", help="backbone the shops fine-tune (default minilm)")
    init.add_argument("--run-config", metavar="'KEY=VALUE ...'",
                      help="further run config (see [tool.flwr.app.config] in pyproject.toml), e.g. 'lr=0.01'")
    init.add_argument("--message-log", action="store_true",
                      help="keep every reply the platform receives in DIR/messages, for merchants to audit")
    init.add_argument("--ca-key-out", metavar="PATH",
                      help="keep the CA's private key here, outside DIR (default: discard it once the server "
                           "certificate is signed; a new certificate then needs a new CA)")
    init.add_argument("--insecure", action="store_true",
                      help="no TLS and no SuperNode authentication (closed test networks only)")
    add = sub.add_parser("add-shop", help="register a merchant's public keys and republish the roster")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("name", metavar="NAME", help="the shop's name on the roster")
    add.add_argument("keys", metavar="PUBKEYS", help="the merchant's public-keys.json (or its JSON text)")
    start = sub.add_parser("start", help="run the SuperLink and the federation (resumes after a crash)")
    start.add_argument("dir", metavar="DIR")
    start.add_argument("--run-config", metavar="'KEY=VALUE ...'", help="override run config for this start")
    start.add_argument("--keep-running", action="store_true", help="keep the SuperLink up after the run")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedinterest.common.data.window import parse_time
    from fedinterest.deploy import flower
    from fedinterest.deploy.keys import ShopKeys
    from fedinterest.deploy.platform import INSECURE_WARNING, add_shop, init_platform, start_platform

    root = Path(args.dir)
    if args.action == "init":
        if args.insecure:
            print(INSECURE_WARNING)
        config = {"num-server-rounds": args.rounds, "min-shops": args.min_shops, "backbone": args.backbone,
                  **flower.parse_pairs(args.run_config, "--run-config")}
        platform = init_platform(root, address=args.address, hosts=args.host,
                                 task_spec=Path(args.task_spec) if args.task_spec else None,
                                 catalogue=Path(args.catalogue) if args.catalogue else None,
                                 calendar=(parse_time(args.start, "--start") if args.start else None,
                                           parse_time(args.end, "--end") if args.end else None),
                                 run_config=config, insecure=args.insecure,
                                 message_log=args.message_log,
                                 ca_key_out=Path(args.ca_key_out) if args.ca_key_out else None)
        print(f"platform directory {platform.root} (mode 0700)")
        if not args.insecure:
            print(f"send merchants: the address {args.address}, {platform.ca} and, once every shop is added, "
                  f"{platform.roster}")
            if args.ca_key_out:
                print(f"the CA's private key is in {Path(args.ca_key_out).resolve()}: keep it offline")
            else:
                print("the CA's private key signed the server certificate and was discarded (no ca.key is kept)")
        return 0
    if args.action == "add-shop":
        roster = add_shop(root, args.name, ShopKeys.read(args.keys))
        print(f"shop {args.name} added; the roster lists {len(roster)} shop(s): {', '.join(sorted(roster.keys))}")
        print(f"roster fingerprint {roster.fingerprint()}: every merchant compares it out of band")
        return 0
    return start_platform(root, run_config=flower.parse_pairs(args.run_config, "--run-config"),
                          keep_running=args.keep_running)
