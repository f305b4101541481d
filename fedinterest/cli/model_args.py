"""Arguments shared by commands that build the model and train it."""

from __future__ import annotations

import argparse

from fedinterest.common.config import ConfigError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from fedinterest.client.privacy import DP_ENGINES
    from fedinterest.client.training import TrainConfig
    from fedinterest.common.model import LoraSettings

    t, lora = TrainConfig(), LoraSettings()
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", default="minilm", metavar="B",
                       help="minilm (default, packaged), tiny (random, for tests), a checkpoint directory or a hub id")
    group.add_argument("--lora-rank", type=int, default=lora.rank, help=f"LoRA rank (default {lora.rank})")
    group.add_argument("--lora-alpha", type=int, default=lora.alpha, help=f"LoRA alpha (default {lora.alpha})")
    group.add_argument("--plain-lora", action="store_true", help="train LoRA A too (default: FFA-LoRA, A frozen)")
    group.add_argument("--lora-layers", default="", metavar="LIST",
                       help="encoder layers with LoRA: all (default), topN (e.g. top2) or indices (=-2,-1); "
                            "the frozen layers below the adapters are computed once per example")
    group.add_argument("--head-init", choices=("names", "random"), default="names",
                       help="initial head: the backbone's representation of each class name (default) or random")
    group = parser.add_argument_group("local training")
    group.add_argument("--epochs", type=float, default=t.epochs, help=f"local epochs per round (default {t.epochs:g})")
    group.add_argument("--batch-size", type=int, default=t.batch_size, help=f"expected batch size (default {t.batch_size})")
    group.add_argument("--physical-batch-size", type=int, default=t.physical_batch_size,
                       help=f"largest batch in memory at once (default {t.physical_batch_size})")
    group.add_argument("--lr", type=float, default=t.learning_rate, help=f"AdamW learning rate (default {t.learning_rate:g})")
    group.add_argument("--max-steps", type=int, help="cap on optimizer steps per round")
    group.add_argument("--clip", type=float, default=t.max_grad_norm, help=f"per-sample gradient clipping norm (default {t.max_grad_norm:g})")
    group.add_argument("--max-length", type=int, default=t.max_length, help=f"tokens per history (default {t.max_length})")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    group.add_argument("--dp-engine", choices=DP_ENGINES, default=t.dp_engine,
                       help="per-example gradients: opacus (default, Opacus' hooks) or fast (one backward pass for "
                            "LoRA's B and the head; the same clipping, noise and accounting)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("privacy")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--epsilon", type=float, default=8.0, help="this shop's privacy budget over all rounds (default 8)")
    mode.add_argument("--non-private", action="store_true", help="no differential privacy (a labelled reference run)")
    group.add_argument("--delta", type=float, help="δ (default 1e-5 for every shop, a public constant; must be below 1/units)")
    group.add_argument("--unit", choices=("user", "example"), default="user",
                       help="what ε protects: a user's whole history (default), or one example (one user at "
                            "one time; a user with k examples then has only about kε)")
    group.add_argument("--accountant", choices=("prv", "rdp"), default="prv",
                       help="privacy accountant for planning and reporting (default prv; rdp overstates ε)")


def train_config(args: argparse.Namespace):
    from fedinterest.client.training import TrainConfig

    return TrainConfig(
        batch_size=args.batch_size,
        physical_batch_size=args.physical_batch_size,
        learning_rate=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_grad_norm=args.clip,
        max_length=args.max_length,
        bf16=args.bf16,
        device=args.device,
        dp_engine=args.dp_engine,
    )


def model_config(args: argparse.Namespace, seed: int = 0):
    from fedinterest.client.shop import ModelConfig
    from fedinterest.common.model import LoraSettings
    from fedinterest.common.model.lora import parse_layers

    lora = LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha, ffa=not args.plain_lora, seed=seed,
                        layers=parse_layers(args.lora_layers))
    return ModelConfig(backbone=args.backbone, lora=lora, head_init=args.head_init)


def privacy_config(args: argparse.Namespace):
    from fedinterest.client.privacy import PrivacyConfig

    if args.non_private:
        return PrivacyConfig(epsilon=None)
    if args.epsilon is None or args.epsilon <= 0:
        raise ConfigError("--epsilon must be > 0 (or pass --non-private)")
    return PrivacyConfig(epsilon=args.epsilon, delta=args.delta, unit=args.unit, accountant=args.accountant)
