"""Exporting the trained global adapter: peft format, the taxonomy and a model card.

``<dir>/adapter`` loads with ``PeftModel.from_pretrained(base, dir/adapter)`` where ``base`` is
the backbone as a sequence classifier with one label per taxonomy class
(``common.model.lora.load_base_model`` builds it). The directory is written next to its final
place and renamed into it, so readers never see half an export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fedinterest.common.atomic import atomic_write_json
from fedinterest.common.model import set_adapter_state
from fedinterest.common.task import Taxonomy
from fedinterest.common.task.priors import Priors

ADAPTER = "adapter"
TAXONOMY = "taxonomy.json"
PRIORS = "priors.json"
MODEL_CARD = "model_card.json"


def export_model(model, state: "dict[str, np.ndarray]", taxonomy: Taxonomy, card: dict, out: str | Path,
                 priors: Priors | None = None) -> Path:
    """Write ``out`` (replacing an older export) and return it.

    The scorer's weights travel in the peft adapter (``modules_to_save``); its platform priors,
    buffers that peft does not save, in ``priors.json``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        set_adapter_state(model, state)
        model.save_pretrained(staging / ADAPTER)
        taxonomy.save(staging / TAXONOMY)
        if priors is not None:
            atomic_write_json(staging / PRIORS, priors.to_dict())
        atomic_write_json(staging / MODEL_CARD, card)
        if out.exists():
            retired = out.with_name(f".{out.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_priors(directory: str | Path) -> Priors | None:
    path = Path(directory) / PRIORS
    return Priors.from_dict(json.loads(path.read_text())) if path.is_file() else None


def read_model_card(directory: str | Path) -> dict:
    from fedinterest.common.data.schema import DataError

    path = Path(directory) / MODEL_CARD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory}: no {MODEL_CARD}; pass a directory written by the federation's export") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
