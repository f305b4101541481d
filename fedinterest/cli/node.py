"""A merchant's node in a live federation: make its keys, then start it on the shop's data.

``init DIR`` makes the shop's SuperNode authentication key and SecAgg identity key, pins the
installed fedinterest release (the sha256 of its app bundle) and prints the public keys to send
to the platform. ``start DIR`` checks the data (the baseline table on it), pins the platform's
roster (it refuses a changed roster unless ``--repin``), refuses an installed release other than
the pinned one (unless ``--repin-app``) and becomes the shop's ``flower-supernode``: TLS against
the platform's CA, authenticated by its key, its ledger in DIR, running only the installed
ClientApp and only for runs of the pinned bundle. Restart it with the same command after a crash
or reboot: the ledger and the budget carry over.
"""

from __future__ import annotations

import argparse

from .data_args import add_data_arguments

NAME = "node"
HELP = "merchant side of a live federation: init keys, start the SuperNode"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="make this shop's keys and print the public keys for the platform")
    init.add_argument("dir", metavar="DIR")
    start = sub.add_parser("start", help="check the data, pin the roster and run this shop's SuperNode")
    start.add_argument("dir", metavar="DIR", nargs="?", default=".", help="the node directory (default: .)")
    add_data_arguments(start)
    start.add_argument("--shop", help="keep only this merchant_id (or shop file of a dataset directory)")
    start.add_argument("--epsilon", type=float, help="this shop's privacy budget over the federation (default 8)")
    start.add_argument("--backbone", default="minilm",
                       help="the backbone this node fine-tunes: minilm (default), tiny or a checkpoint directory; "
                            "its weights are pinned by sha256, and a round naming another backbone is refused")
    start.add_argument("--platform", required=True, metavar="HOST:PORT", help="the platform's SuperLink")
    start.add_argument("--ca", metavar="PEM", help="the platform's CA certificate (ca.pem); required unless --insecure")
    start.add_argument("--roster", required=True, metavar="JSON", help="the roster the platform published")
    start.add_argument("--repin", action="store_true",
                       help="accept a roster that differs from the pinned one (after comparing fingerprints)")
    start.add_argument("--repin-app", action="store_true",
                       help="serve the installed fedinterest release although it differs from the pinned one "
                            "(after checking the upgrade)")
    start.add_argument("--runtime-port", type=int, default=9094,
                       help="local port of the SuperNode's ClientApp API (default 9094; one per node on a machine)")
    start.add_argument("--node-config", metavar="'KEY=VALUE ...'",
                       help="further node config, e.g. 'delta=1e-6 threads=4' (see client/node.py NODE_KEYS)")
    start.add_argument("--skip-check", action="store_true", help="do not print the baseline table first")
    start.add_argument("--insecure", action="store_true", help="no TLS, no authentication (test networks only)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedinterest.common.config import ConfigError
    from fedinterest.deploy import flower
    from fedinterest.deploy.merchant import (INSECURE_WARNING, NodeDir, check_app, check_data, init_node, node_config,
                                 pin_roster, run_node, runner_command, supernode_command)
    from fedinterest.deploy.node_runner import poll_interval

    if args.action == "init":
        keys = init_node(Path(args.dir), echo=print)
        node = NodeDir(args.dir)
        print(f"keys written to {node.root} (mode 0700; keep supernode.key and identity.key private; back them up "
              "with the ledger)")
        print(f"send {node.public_keys} to the platform; it holds:")
        print(keys.to_json())
        return 0
    node = NodeDir(args.dir)
    node.check()
    if args.insecure:
        print(INSECURE_WARNING)
    elif not args.ca:
        raise ConfigError("--ca: the platform's CA certificate is required (or --insecure on a test network)")
    elif not Path(args.ca).is_file():
        raise ConfigError(f"--ca {args.ca}: no such file")
    data_format = None if args.format == "auto" else args.format
    config = node_config(node, data=args.data, data_format=data_format, shop=args.shop, epsilon=args.epsilon,
                         extra=flower.parse_pairs(args.node_config, "--node-config"), backbone=args.backbone)
    roster = pin_roster(node, Path(args.roster), repin=args.repin)
    print(f"roster: {len(roster)} shops, fingerprint {roster.fingerprint()} (compare it with the other merchants)")
    app = check_app(node, repin=args.repin_app, echo=print)
    print(f"app: this node runs only fedinterest {app.version}, bundle sha256 {app.fab_hash}")
    poll_interval()  # a bad $FLWR_SUPEREXEC_TASK_POLL_INTERVAL fails here, not in the runner
    if not args.skip_check:
        check_data(args.data, data_format, args.shop, print)
    supernode = supernode_command(node, platform=args.platform, ca=None if args.insecure else Path(args.ca),
                                  runtime_port=args.runtime_port, node_config=config)
    runner = runner_command(node, runtime_port=args.runtime_port, app=app)
    print(f"starting the SuperNode for {args.platform}; state and ledger in {node.root}", flush=True)
    return run_node(node, supernode, runner, lambda line: print(line, flush=True))
