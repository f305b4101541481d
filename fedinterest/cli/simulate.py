"""Simulate the whole federation on this machine: ``flwr run`` on a local simulation SuperLink (Ray).

The command checks its arguments and hands them to ``fedinterest.simulations.experiment.simulate``.

N shops (the default synthetic shops, or --data split by --partition) each run the real
ClientApp: private local rounds under their own ledger, updates only through SecAgg+. The real
ServerApp aggregates, evaluates, checkpoints every round and exports the adapter. At the end the
federated model is scored on the pooled test set beside the baselines and a centralized
non-private reference; ε per shop, bytes on the wire, report.json and plots go to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedinterest.simulations.experiment import REFERENCE_PER_SHOP

from .data_args import add_task_arguments, task_config
from .model_args import add_model_arguments, add_privacy_arguments, model_config, privacy_config, train_config

NAME = "simulate"
MAX_TRAIN_PER_USER = 6  # a customer's training examples by default: a first run takes minutes
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


def run(args: argparse.Namespace) -> int:
    from fedinterest.common.config import ConfigError
    from fedinterest.common.model.backbone import resolve_backbone
    from fedinterest.common.task import Taxonomy
    from fedinterest.simulations.experiment import Experiment, simulate

    if args.shops < 3:
        raise ConfigError("--shops must be >= 3: secure aggregation needs three")
    if args.max_train_per_user < 0:
        raise ConfigError("--max-train-per-user must be >= 0 (0: all of a customer's training examples)")
    if args.eval_per_user < 1:
        raise ConfigError("--eval-per-user must be >= 1")
    if args.secagg_norm is not None and args.secagg_norm < 0:
        raise ConfigError("--secagg-norm must be >= 0 (0: the clip box only)")
    resolve_backbone(args.backbone)  # a bad --backbone fails here, not inside the federation
    train = train_config(args)
    run_config = {
        "num-server-rounds": args.rounds, "backbone": args.backbone,
        "lora-rank": args.lora_rank, "lora-alpha": args.lora_alpha, "lora-layers": args.lora_layers,
        "head-init": args.head_init,
        "plain-lora": args.plain_lora, "batch-size": train.batch_size,
        "physical-batch-size": train.physical_batch_size, "lr": train.learning_rate, "local-epochs": train.epochs,
        "max-steps": train.max_steps or 0, "clip": train.max_grad_norm, "max-length": train.max_length,
        "eval-per-user": args.eval_per_user, "eval-every": args.eval_every, "secagg-clip": args.secagg_clip,
        "server-optimizer": args.server_optimizer,
    }
    if args.server_lr is not None:
        run_config["server-lr"] = args.server_lr
    if args.secagg_norm is not None:
        run_config["secagg-norm"] = args.secagg_norm
    return simulate(Experiment(
        out=Path(args.out), privacy=privacy_config(args), train=train, models=model_config(args, args.seed),
        task=task_config(args), run_config=run_config, data=args.data, data_format=args.format, shops=args.shops,
        partition=args.partition, alpha=args.alpha, seed=args.seed,
        taxonomy=Taxonomy.load(args.taxonomy) if args.taxonomy else None,
        max_train_per_user=args.max_train_per_user, resume=args.resume, device=args.device,
        gpus_per_shop=args.gpus_per_shop, cpus_per_shop=args.cpus_per_shop, bf16=bool(args.bf16),
        dp_engine=args.dp_engine, central_test=args.central_test, reference_rounds=args.reference_rounds,
        reference_examples=args.reference_examples))
