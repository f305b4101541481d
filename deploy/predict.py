"""Predicting with an exported federated adapter: the steps ``fedinterest predict`` and ``serve`` share.

``load_predictor`` loads the export (peft adapter, taxonomy, model card, priors) on its backbone;
``prediction_time``, ``score_examples`` and ``rank`` turn a user's latest history into the top-5
next categories and the probability of migrating, so the batch file and the HTTP server give the
same numbers for the same events. ``write_predictions`` is the batch file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Categories reported per user (``other`` is never one of them).
TOP_K = 5


def write_predictions(adapter: str | Path, data: str | Path, options, out: str | Path, at: int | None = None,
                      device: str = "auto") -> int:
    """Every user's top-5 next categories and P(migrate) at ``at`` (default: the end of the data) to ``out``.

    ``options`` are the ``LoadOptions`` of ``data``; the CSV is written atomically. Returns the users.
    """
    import pandas as pd

    from fedinterest.common.atomic import atomic_write_text
    from fedinterest.common.data import load_events
    from fedinterest.common.data.schema import DataError
    from fedinterest.common.task import EventArrays, latest_examples

    predictor = load_predictor(adapter, device)
    config, taxonomy = predictor.config, predictor.taxonomy
    table = load_events(data, options)
    print(table.report.summary())
    events = EventArrays.from_table(table, taxonomy)
    at = at if at is not None else prediction_time(events.timestamp, config.stride_seconds)
    examples = latest_examples(events, config, at)
    if not len(examples):
        raise DataError(f"{data}: no user has {config.min_history} events before {at}")
    probs = score_examples(predictor, examples, table.category_names)
    ranked = rank(probs, examples.current, taxonomy.other)
    names = np.array(taxonomy.class_names, dtype=object)
    rows = {
        "user_id": events.user_ids[examples.user],
        "prediction_time": pd.to_datetime(examples.t, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "current_interest": names[examples.current],
    }
    for k in range(TOP_K):
        rows[f"top{k + 1}"] = names[ranked.top[:, k]]
        rows[f"top{k + 1}_p"] = np.round(ranked.top_p[:, k], 6)
    rows["p_migrate"] = np.round(ranked.p_migrate, 6)
    atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote predictions for {len(examples):,} users at {rows['prediction_time'][0]} to {out}")
    return len(examples)


@dataclass(frozen=True)
class Predictor:
    """An exported adapter loaded for prediction, with the task settings it was trained under."""

    export: Path
    model: Any  # peft model, in eval mode, priors set
    tokenizer: Any
    taxonomy: Any  # common.task.Taxonomy
    config: Any  # common.config.TaskConfig
    max_length: int
    backbone: str

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)


@dataclass(frozen=True)
class Ranked:
    """Per example: the top classes (best first), their probabilities, and P(migrate)."""

    top: np.ndarray  # (n, k) class indices
    top_p: np.ndarray  # (n, k)
    p_migrate: np.ndarray  # (n,)


def load_predictor(adapter: str | Path, device: str = "auto") -> Predictor:
    """The export at ``adapter`` (or its ``adapter/`` folder) on its backbone, priors set."""
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.model.scorer import set_priors
    from fedinterest.common.task import Taxonomy
    from fedinterest.server.export import ADAPTER, TAXONOMY, read_model_card, read_priors

    export = Path(adapter)
    if export.name == ADAPTER:
        export = export.parent
    card = read_model_card(export)
    taxonomy = Taxonomy.load(export / TAXONOMY)
    model, tokenizer = load_exported(export, card, taxonomy, device)
    priors = read_priors(export)
    if priors is not None:
        set_priors(model, priors)
    return Predictor(
        export=export,
        model=model,
        tokenizer=tokenizer,
        taxonomy=taxonomy,
        config=TaskConfig.from_dict(card["task"]),
        max_length=int(card.get("settings", {}).get("max-length", 128)),
        backbone=str(card["backbone"]),
    )


def prediction_time(timestamps: np.ndarray, stride: int) -> int:
    """The default prediction time: the end of the stride period (day) holding the last event."""
    return int(-(-(int(np.max(timestamps)) + 1) // stride) * stride)


def score_examples(predictor: Predictor, examples, names: dict[str, str], batch_size: int = 64) -> np.ndarray:
    """Class probabilities, (n, n_classes), for ``examples`` rendered with category ``names``."""
    from fedinterest.client.shop import shop_dataset
    from fedinterest.client.training import predict_proba

    data = shop_dataset(examples, names, predictor.tokenizer, predictor.max_length)
    return predict_proba(predictor.model, data, batch_size=batch_size)


def rank(probs: np.ndarray, current: np.ndarray, other: int, k: int = TOP_K) -> Ranked:
    """Top-``k`` classes by probability (class ``other`` never one) and 1 - p(current interest)."""
    named = probs.copy()
    named[:, other] = -1.0  # `other` is never a prediction
    top = np.argsort(-named, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(top))
    return Ranked(top, probs[rows[:, None], top], 1.0 - probs[rows, current])


def load_exported(export: Path, card: dict, taxonomy, device: str = "auto"):
    """The exported adapter on its backbone, as ``PeftModel.from_pretrained`` loads it."""
    import warnings

    from peft import PeftModel

    from fedinterest.common.data.schema import DataError
    from fedinterest.common.model import load_tokenizer, resolve_backbone, resolve_device
    from fedinterest.common.model.lora import load_base_model
    from fedinterest.server.export import ADAPTER

    if int(card.get("num_labels", taxonomy.n_classes)) != taxonomy.n_classes:
        raise DataError(f"{export}: the model card and taxonomy.json disagree on the number of classes")
    backbone = resolve_backbone(card["backbone"])
    base = load_base_model(backbone, taxonomy.n_classes, resolve_device(device))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = PeftModel.from_pretrained(base, str(export / ADAPTER))
    model.eval()
    return model, load_tokenizer(backbone)
