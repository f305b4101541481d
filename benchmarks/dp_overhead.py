"""Throughput of DP-LoRA (Opacus hooks) against non-private LoRA on the same model and batch.

Prints samples/s for both, in fp32 and bf16 autocast, and their ratio (DP / non-private),
measured side by side in one run. Usage:

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

from client.training import DPSettings, make_private, release
from common.model import LoraSettings, build_model, resolve_backbone
from common.model.backbone import Backbone


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


def throughput(model, optimizer, batch, steps: int, warmup: int, bf16: bool) -> float:
    device = batch["input_ids"].device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        with autocast:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        F.cross_entropy(logits.float(), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    synchronize(device)
    return steps * len(batch["labels"]) / (time.perf_counter() - start)


def measure(backbone: Backbone, args, device: torch.device, bf16: bool) -> tuple[float, float]:
    """Median samples/s of non-private and DP training, alternating repeats so drift hits both."""
    n_classes = 51
    g = torch.Generator().manual_seed(0)
    vocab = 90 if backbone.spec == "tiny" else 1000
    batch = {
        "input_ids": (torch.randint(5, vocab, (args.batch, args.length), generator=g)).to(device),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long, device=device),
        "labels": torch.randint(0, n_classes, (args.batch,), generator=g).to(device),
    }
    plain = build_model(backbone, n_classes, LoraSettings(), device)
    plain.train()
    plain_opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)

    model = build_model(backbone, n_classes, LoraSettings(), device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(range(args.batch), batch_sampler=[list(range(args.batch))], collate_fn=lambda b: b)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0, steps=1)
    private_model, dp_opt, _ = make_private(model, opt, loader, dp, expected_batch=args.batch)
    plain_rates, dp_rates = [], []
    try:
        for repeat in range(args.repeats):
            warmup = args.warmup if repeat == 0 else 0
            plain_rates.append(throughput(plain, plain_opt, batch, args.steps, warmup, bf16))
            dp_rates.append(throughput(private_model, dp_opt, batch, args.steps, warmup, bf16))
    finally:
        release(private_model, model)
    return float(np.median(plain_rates)), float(np.median(dp_rates))


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
          f"repeats of {args.steps} steps; FFA-LoRA r=8 on query/value, Opacus hooks")
    print(f"{'model':<10} {'dtype':<5} {'non-private/s':>14} {'DP/s':>10} {'ratio DP/plain':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            backbone = backbone_for(model_name.strip(), Path(tmp))
            for dtype in args.dtypes.split(","):
                plain, dp = measure(backbone, args, device, bf16=dtype.strip() == "bf16")
                print(f"{model_name:<10} {dtype:<5} {plain:>14.1f} {dp:>10.1f} {dp / plain:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
