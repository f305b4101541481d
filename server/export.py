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

from common.atomic import atomic_write_json
from common.model import set_adapter_state
from common.task import Taxonomy

ADAPTER = "adapter"
TAXONOMY = "taxonomy.json"
MODEL_CARD = "model_card.json"


def export_model(model, state: "dict[str, np.ndarray]", taxonomy: Taxonomy, card: dict, out: str | Path) -> Path:
    """Write ``out`` (replacing an older export) and return it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        set_adapter_state(model, state)
        model.save_pretrained(staging / ADAPTER)
        taxonomy.save(staging / TAXONOMY)
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


def read_model_card(directory: str | Path) -> dict:
    from common.data.schema import DataError

    path = Path(directory) / MODEL_CARD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory}: no {MODEL_CARD}; pass a directory written by the federation's export") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
