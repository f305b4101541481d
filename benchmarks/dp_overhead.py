"""Throughput of DP-LoRA (Opacus hooks, and the fast path) against non-private LoRA on the same model and batch.

Prints samples/s for non-private training, DP-SGD with Opacus hooks and DP-SGD with the fast
per-example-gradient step (``client.fast_dp``), in fp32 and bf16 autocast, with each DP
engine's ratio to non-private, measured side by side in one run. Usage:

    python benchmarks/dp_overhead.py                      # CPU: tiny and MiniLM
    python benchmarks/dp_overhead.py --models bert-base --batch 64 --length 128   # GPU goal run

``bert-base`` is a BERT-base configuration with random weights (no download).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedinterest.client.fast_dp import FastDPStep
from fedinterest.client.training import DPSettings, logits_of, make_private, release
from fedinterest.common.model import LoraSettings, build_model, resolve_backbone
from fedinterest.common.model.backbone import Backbone
from fedinterest.common.task.features import FEATURE_NAMES


def backbone_for(name: str, tmp: Path) -> Backbone:
    if name != "bert-base":
        return resolve_backbone(name)
    from transformers import BertConfig, BertModel

    directory = tmp / "bert-base-random"
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(directory)
    return Backbone("bert-base", str(directory), "directory")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_loss(model, batch, bf16: bool) -> torch.Tensor:
    """The training loss: the head, then the interest scorer (whose weights train too)."""
    return F.cross_entropy(logits_of(model, batch, bf16), batch["labels"])


def autograd_step(model, optimizer, batch, bf16: bool) -> None:
    """Non-private, or Opacus (whose optimizer clips and noises in ``step``)."""
    forward_loss(model, batch, bf16).backward()
    optimizer.step()
    optimizer.zero_grad()


def fast_step(fast: FastDPStep, model, optimizer, generator, batch, bf16: bool) -> None:
    fast.accumulate(lambda: forward_loss(model, batch, bf16))
    fast.step(optimizer, generator)


def throughput(step, batch, steps: int, warmup: int) -> float:
    device = batch["input_ids"].device
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        step()
    synchronize(device)
    return steps * len(batch["labels"]) / (time.perf_counter() - start)


def trainable_model(backbone: Backbone, n_classes: int, device: torch.device):
    model = build_model(backbone, n_classes, LoraSettings(), device)
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def measure(backbone: Backbone, args, device: torch.device, bf16: bool) -> tuple[float, float, float]:
    """Median samples/s of non-private, Opacus and fast DP training, alternating repeats so drift hits all."""
    n_classes = 51
    g = torch.Generator().manual_seed(0)
    vocab = 90 if backbone.spec == "tiny" else 1000
    batch = {
        "input_ids": (torch.randint(5, vocab, (args.batch, args.length), generator=g)).to(device),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long, device=device),
        "labels": torch.randint(0, n_classes, (args.batch,), generator=g).to(device),
        # the scorer's inputs: 8 history classes with their features, the current interest
        "feature_classes": torch.randint(0, n_classes, (args.batch, 8), generator=g).to(device),
        "feature_values": torch.rand(args.batch, 8, len(FEATURE_NAMES), generator=g).to(device),
        "current": torch.randint(0, n_classes, (args.batch,), generator=g).to(device),
    }
    plain, plain_opt = trainable_model(backbone, n_classes, device)
    model, opt = trainable_model(backbone, n_classes, device)
    loader = DataLoader(range(args.batch), batch_sampler=[list(range(args.batch))], collate_fn=lambda b: b)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0, steps=1)
    private_model, dp_opt, _ = make_private(model, opt, loader, dp, expected_batch=args.batch)
    fast_model, fast_opt = trainable_model(backbone, n_classes, device)
    fast = FastDPStep(fast_model, dp.max_grad_norm, dp.noise_multiplier, expected_batch_size=args.batch)
    generator = torch.Generator(device=device).manual_seed(0)
    engines = [
        lambda: autograd_step(plain, plain_opt, batch, bf16),
        lambda: autograd_step(private_model, dp_opt, batch, bf16),
        lambda: fast_step(fast, fast_model, fast_opt, generator, batch, bf16),
    ]
    rates: list[list[float]] = [[] for _ in engines]
    try:
        for repeat in range(args.repeats):
            warmup = args.warmup if repeat == 0 else 0
            for step, out in zip(engines, rates):
                out.append(throughput(step, batch, args.steps, warmup))
    finally:
        release(private_model, model)
        fast.remove()
    plain_rate, opacus_rate, fast_rate = (float(np.median(r)) for r in rates)
    return plain_rate, opacus_rate, fast_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,minilm", help="comma-separated: tiny, minilm, bert-base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (median reported)")
    parser.add_argument("--dtypes", default=None, help="fp32,bf16 (default: both on GPU, fp32 on CPU)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if args.dtypes is None:  # CPUs without bf16 units run bf16 autocast tens of times slower
        args.dtypes = "fp32,bf16" if device.type == "cuda" else "fp32"
    print(f"device: {name}; batch {args.batch}, length {args.length}, median of {args.repeats} alternating "
          f"repeats of {args.steps} steps; FFA-LoRA r=8 on query/value; DP: Opacus hooks and the fast step")
    print(f"{'model':<10} {'dtype':<5} {'non-private/s':>14} {'Opacus/s':>10} {'Opacus/plain':>13} "
          f"{'fast/s':>10} {'fast/plain':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            backbone = backbone_for(model_name.strip(), Path(tmp))
            for dtype in args.dtypes.split(","):
                plain, opacus, fast = measure(backbone, args, device, bf16=dtype.strip() == "bf16")
                print(f"{model_name:<10} {dtype:<5} {plain:>14.1f} {opacus:>10.1f} {opacus / plain:>13.2f} "
                      f"{fast:>10.1f} {fast / plain:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
