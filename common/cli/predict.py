"""Predict each user's next interests with an exported federated adapter.

Loads the export (peft adapter, taxonomy, model card) on its backbone, takes every user's
latest history in --data (up to --at, default: the end of the data) and writes, per user, the
top-5 next categories with their probabilities and the probability of migrating (1 - p of the
current interest) to --out, atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .data_args import add_data_arguments, load_options

NAME = "predict"
HELP = "top-5 next categories and migration probability per user, from an exported adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="an export directory (runs/.../federation/export) or its adapter/ folder")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="CSV", help="predictions file to write")
    parser.add_argument("--at", type=int, metavar="UNIX_SECONDS",
                        help="prediction time (default: the end of the day holding the last event)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from client.shop import shop_dataset
    from client.training import predict_proba
    from common.atomic import atomic_write_text
    from common.config import TaskConfig
    from common.data import load_events
    from common.data.schema import DataError
    from common.task import EventArrays, Taxonomy, latest_examples
    from common.model.scorer import set_priors
    from server.export import ADAPTER, TAXONOMY, read_model_card, read_priors

    export = Path(args.adapter)
    if export.name == ADAPTER:
        export = export.parent
    card = read_model_card(export)
    taxonomy = Taxonomy.load(export / TAXONOMY)
    model, tokenizer = load_exported(export, card, taxonomy, args.device)
    priors = read_priors(export)
    if priors is not None:
        set_priors(model, priors)
    config = TaskConfig.from_dict(card["task"])
    table = load_events(args.data, load_options(args))
    print(table.report.summary())
    events = EventArrays.from_table(table, taxonomy)
    stride = config.stride_seconds
    at = args.at if args.at is not None else int(-(-(int(events.timestamp.max()) + 1) // stride) * stride)
    examples = latest_examples(events, config, at)
    if not len(examples):
        raise DataError(f"{args.data}: no user has {config.min_history} events before {at}")
    max_length = int(card.get("settings", {}).get("max-length", 128))
    probs = predict_proba(model, shop_dataset(examples, table.category_names, tokenizer, max_length))
    names = np.array(taxonomy.class_names, dtype=object)
    named = probs.copy()
    named[:, taxonomy.other] = -1.0  # `other` is never a prediction
    top = np.argsort(-named, axis=1, kind="stable")[:, :5]
    rows = {
        "user_id": events.user_ids[examples.user],
        "prediction_time": pd.to_datetime(examples.t, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "current_interest": names[examples.current],
    }
    for k in range(5):
        rows[f"top{k + 1}"] = names[top[:, k]]
        rows[f"top{k + 1}_p"] = np.round(probs[np.arange(len(top)), top[:, k]], 6)
    rows["p_migrate"] = np.round(1.0 - probs[np.arange(len(top)), examples.current], 6)
    atomic_write_text(args.out, pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote predictions for {len(examples):,} users at {rows['prediction_time'][0]} to {args.out}")
    return 0


def load_exported(export: Path, card: dict, taxonomy, device: str = "auto"):
    """The exported adapter on its backbone, as ``PeftModel.from_pretrained`` loads it."""
    import warnings

    from peft import PeftModel

    from common.data.schema import DataError
    from common.model import load_tokenizer, resolve_backbone, resolve_device
    from common.model.lora import load_base_model
    from server.export import ADAPTER

    if int(card.get("num_labels", taxonomy.n_classes)) != taxonomy.n_classes:
        raise DataError(f"{export}: the model card and taxonomy.json disagree on the number of classes")
    backbone = resolve_backbone(card["backbone"])
    base = load_base_model(backbone, taxonomy.n_classes, resolve_device(device))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = PeftModel.from_pretrained(base, str(export / ADAPTER))
    model.eval()
    return model, load_tokenizer(backbone)
