"""Simulate the whole federation on this machine: ``flwr run`` on a local simulation SuperLink (Ray).

N shops (the default synthetic shops, or --data split by --partition) each run the real
ClientApp: private local rounds under their own ledger, updates only through SecAgg+. The real
ServerApp aggregates, evaluates, checkpoints every round and exports the adapter. At the end the
federated model is scored on the pooled test set beside the baselines and a centralized
non-private reference; ε per shop, bytes on the wire, report.json and plots go to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .data_args import add_task_arguments, task_config
from .model_args import add_model_arguments, add_privacy_arguments, model_config, privacy_config, train_config

NAME = "simulate"
MAX_TRAIN_PER_USER = 6  # a customer's training examples by default: a first run takes minutes
REFERENCE_PER_SHOP = 3000  # the non-private reference's pooled examples per shop, by default
HELP = "simulate the federation (flwr run, Flower simulation runtime): DP shops, secure aggregation, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("federation")
    group.add_argument("--shops", type=int, default=5, help="number of shops (default 5)")
    group.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    group.add_argument("--data", metavar="PATH", help="events to split into shops (default: synthetic shops)")
    group.add_argument("--format", default=None, help="format of --data (default: detect)")
    group.add_argument("--partition", choices=("auto", "natural", "dirichlet", "iid"), default="auto",
                       help="how --data becomes shops (default: the shop id where the data has one, else dirichlet)")
    group.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    group.add_argument("--out", default="runs/simulation", metavar="DIR", help="report folder (default runs/simulation)")
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    group.add_argument("--seed", type=int, default=0, help="seed; every random choice derives from it (default 0)")
    group.add_argument("--max-train-per-user", type=int, default=MAX_TRAIN_PER_USER,
                       help=f"training examples of each customer (default {MAX_TRAIN_PER_USER}, chosen by a keyed rank "
                            "that depends on that customer alone, so that a first run takes minutes; 0: all of them)")
    group.add_argument("--eval-per-user", type=int, default=1,
                       help="test examples of each customer per federated evaluation (default 1, keyed per customer)")
    group.add_argument("--eval-every", type=int, default=0,
                       help="federated evaluation every N rounds as well as after the last (default 0: the last only; "
                            "each one is a noised release in every shop's ledger)")
    group.add_argument("--central-test", type=int, default=2000, help="pooled test examples in the final table")
    group.add_argument("--reference-rounds", type=int, default=None,
                       help="rounds of the centralized non-private reference (default --rounds; 0 skips it)")
    group.add_argument("--reference-examples", type=int, default=None,
                       help=f"pooled training examples of the non-private reference (default {REFERENCE_PER_SHOP} x shops)")
    group.add_argument("--server-optimizer", choices=("fedavg", "fedadam"), default="fedavg")
    group.add_argument("--server-lr", type=float, default=None, help="server learning rate (fedavg 1.0, fedadam 0.01)")
    group.add_argument("--secagg-clip", type=float, default=0.5, help="per-element clip of updates before quantization")
    group.add_argument("--secagg-norm", type=float, default=None,
                       help="L2 bound of one shop's update (the run config's secagg-norm by default; 0: the clip "
                            "box only): no shop moves the mean further than twice it")
    group.add_argument("--cpus-per-shop", type=float, default=None,
                       help="whole CPUs (and torch threads) per simulated shop worker (default: max(2, cores/4); "
                            "1 with --device cuda)")
    group.add_argument("--gpus-per-shop", type=float, default=None,
                       help="with --device cuda: each shop worker's share of one GPU (default 0.125: eight workers "
                            "per GPU, each with one frozen backbone its shops share)")
    add_privacy_arguments(parser)
    add_model_arguments(parser)
    add_task_arguments(parser)


def shared_encodings(out: Path, gpus: int) -> dict[str, str]:
    """On GPUs many shop workers run at once and a shop's next round may land on another one: they
    share the shops' frozen-prefix encodings through a cache in ``out`` instead of each encoding
    them again. One CPU worker keeps them in memory."""
    from common.model.prefix import CACHE_ENV

    return {CACHE_ENV: str((out / "prefix-cache").resolve())} if gpus else {}


def run(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from common.model.backbone import resolve_backbone
    from common.report import format_table
    from common.task import Taxonomy
    from simulations.central import central_table
    from simulations.report import plot_rounds, shop_privacy, write_report
    from simulations.flwr_run import FederationFailed, run_federation_process, simulation_devices
    from simulations.runner import LEDGERS_NOTE, prepare

    if args.shops < 3:
        raise ConfigError("--shops must be >= 3: secure aggregation needs three")
    if args.max_train_per_user < 0:
        raise ConfigError("--max-train-per-user must be >= 0 (0: all of a customer's training examples)")
    if args.eval_per_user < 1:
        raise ConfigError("--eval-per-user must be >= 1")
    resolve_backbone(args.backbone)  # a bad --backbone fails here, not inside the federation
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    started = time.perf_counter()
    out = Path(args.out)
    privacy = privacy_config(args)
    epsilon = privacy.epsilon
    node_privacy = {"privacy-unit": privacy.unit, "accountant": privacy.accountant}
    if privacy.delta is not None:
        node_privacy["delta"] = privacy.delta
    import torch

    device, gpus, gpus_per_shop = simulation_devices(args.device, args.gpus_per_shop, torch.cuda.device_count())
    args.device = device  # the reference and the final table run there too
    cpus = os.cpu_count() or 2
    if args.cpus_per_shop is None:
        args.cpus_per_shop = 1.0 if gpus else float(min(cpus, max(2, cpus // 4)))
    threads = max(1, int(args.cpus_per_shop))
    node_settings = {"device": device, "bf16": bool(args.bf16), "dp-engine": args.dp_engine}
    prepared = prepare(out, data=args.data, data_format=args.format, shops=args.shops, partition=args.partition,
                       alpha=args.alpha, seed=args.seed, epsilon=epsilon, privacy=node_privacy,
                       node_settings=node_settings,
                       taxonomy=Taxonomy.load(args.taxonomy) if args.taxonomy else None,
                       max_train_per_user=args.max_train_per_user, fresh=not args.resume,
                       threads=threads, task_config=task_config(args))
    print(f"{len(prepared.shops)} shops from {prepared.data}; {privacy.describe()}; secure aggregation on")
    print(LEDGERS_NOTE)
    if gpus:
        print(f"shops train on {gpus} GPU(s), {gpus_per_shop:g} of a GPU per shop worker "
              f"({'bf16' if args.bf16 else 'fp32'}, DP engine {args.dp_engine})")
    train = train_config(args)
    models = model_config(args, args.seed)
    run_config = {
        "num-server-rounds": args.rounds, "seed": args.seed, "backbone": args.backbone,
        "lora-rank": args.lora_rank, "lora-alpha": args.lora_alpha, "lora-layers": args.lora_layers,
        "head-init": args.head_init,
        "plain-lora": args.plain_lora, "batch-size": train.batch_size,
        "physical-batch-size": train.physical_batch_size, "lr": train.learning_rate, "local-epochs": train.epochs,
        "max-steps": train.max_steps or 0, "clip": train.max_grad_norm, "max-length": train.max_length,
        "eval-per-user": args.eval_per_user, "eval-every": args.eval_every, "secagg-clip": args.secagg_clip,
        "server-optimizer": args.server_optimizer, "out-dir": str(out / "federation"), "resume": args.resume,
    }
    if args.server_lr is not None:
        run_config["server-lr"] = args.server_lr
    if args.secagg_norm is not None:
        if args.secagg_norm < 0:
            raise ConfigError("--secagg-norm must be >= 0 (0: the clip box only)")
        run_config["secagg-norm"] = args.secagg_norm
    try:
        result = run_federation_process(prepared, run_config, cpus=cpus, cpus_per_shop=args.cpus_per_shop,
                                        gpus=gpus, gpus_per_shop=gpus_per_shop,
                                        environment=shared_encodings(out, gpus)).result
    except FederationFailed as exc:
        print(f"fedinterest simulate: error: {exc}", file=sys.stderr)
        return 1
    label = f"federated [{privacy.label()}, SecAgg+]"
    reference_rounds = args.rounds if args.reference_rounds is None else args.reference_rounds
    pooled_examples = args.reference_examples or REFERENCE_PER_SHOP * len(prepared.shops)
    rows = central_table(prepared.table, result.task, models, train, result.weights, label,
                         max_test=args.central_test, reference_rounds=reference_rounds,
                         reference_examples=pooled_examples)
    shop_terms = shop_privacy(prepared.node_configs, prepared.shops)
    epsilons = {name: entry["epsilon"] for name, entry in shop_terms.items()}
    wire_bytes = sum(h["bytes_up"] + h["bytes_down"] for h in result.history)
    print()
    print(format_table(rows))
    print()
    for shop, entry in shop_terms.items():
        values = entry["epsilon"]
        if values:
            spent = (f"ε {values[-1]:.3f} per {entry['unit']} after {len(values)} releases "
                     f"({', '.join(entry['releases'])}), δ={entry['delta']:.1e}, {entry['accountant'].upper()}")
        else:
            spent = "no private release recorded"
        print(f"  {shop}: {spent}")
    print(f"label space: {result.task.label_space} ({result.task.taxonomy.n_classes - 1} categories + other)")
    flows = top_flows(result.task)
    if flows:
        print("top migration flows of all shops (noised, securely summed):")
        for flow in flows[:10]:
            print(f"  {flow['from']} -> {flow['to']}: {flow['share']:.1%} of moves from {flow['from']}")
    print(f"bytes on the wire: {wire_bytes / 1e6:.2f} MB over {len(result.history)} rounds "
          f"({wire_bytes / max(len(result.history), 1) / max(len(prepared.shops), 1) / 1e6:.2f} MB per shop per round)")
    plots = plot_rounds(result.history, epsilons, out)
    report = {
        "shops": prepared.shops, "rounds": len(result.history), "privacy": privacy.describe(),
        "privacy_unit": privacy.unit if privacy.private else None,
        "accountant": privacy.accountant if privacy.private else None,
        "privacy_per_shop": shop_terms, "label_space": result.task.label_space, "top_flows": flows,
        "table": rows, "epsilon_per_shop": epsilons, "history": result.history, "bytes_on_the_wire": wire_bytes,
        "export": result.export_dir, "seconds": time.perf_counter() - started, "settings": run_config,
    }
    path = write_report(out, report)
    print(f"report: {path}; plots: {', '.join(str(p) for p in plots)}; adapter: {result.export_dir}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def top_flows(task, limit: int = 20) -> list[dict]:
    """The largest (current interest -> next interest) moves in the platform's private label flows."""
    priors = task.priors
    if priors is None or priors.counts is None or len(priors.counts) < 2:
        return []
    moves = priors.counts[:-1].copy()
    rows = len(moves)
    moves[range(rows), range(rows)] = 0.0  # staying is not a migration
    moves[:, task.taxonomy.other] = 0.0
    totals = moves.sum(axis=1, keepdims=True)
    names = task.taxonomy.class_names
    order = sorted(((i, j) for i in range(rows) for j in range(moves.shape[1]) if moves[i, j] > 0),
                   key=lambda ij: -moves[ij])[:limit]
    return [{"from": names[i], "to": names[j], "mass": float(moves[i, j]), "share": float(moves[i, j] / totals[i, 0])}
            for i, j in order]
