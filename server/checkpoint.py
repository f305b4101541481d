"""Per-round checkpoints of the federation, for ``--resume``.

A checkpoint directory holds ``checkpoint.npz`` (the global adapter as a flat vector plus the
server optimizer's arrays) and ``checkpoint.json`` (round, optimizer scalars, the run-config
hash, the history of metrics). Both are written atomically, the JSON last: it names the npz's
sha256, so a torn pair is detected rather than half-loaded. Resuming under a different run
configuration is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedinterest.common.atomic import atomic_write_bytes, atomic_write_text
from fedinterest.common.data.schema import DataError

ARRAYS = "checkpoint.npz"
META = "checkpoint.json"


class CheckpointError(DataError):
    """A checkpoint that cannot be used for this run."""


def config_hash(config: dict) -> str:
    """sha256 of a run configuration (canonical JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    round: int
    weights: np.ndarray
    config_hash: str
    optimizer: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays = {"weights": self.weights}
        scalars = {}
        for key, value in self.optimizer.items():
            if isinstance(value, np.ndarray):
                arrays[f"optimizer.{key}"] = value
            else:
                scalars[key] = value
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        atomic_write_bytes(directory / ARRAYS, payload)
        meta = {
            "round": self.round,
            "config_hash": self.config_hash,
            "optimizer_scalars": scalars,
            "history": self.history,
            "extra": self.extra,
            "arrays_sha256": hashlib.sha256(payload).hexdigest(),
        }
        atomic_write_text(directory / META, json.dumps(meta, indent=1, default=float))

    @classmethod
    def load(cls, directory: str | Path, expected_hash: str | None = None) -> "Checkpoint":
        directory = Path(directory)
        meta_path, arrays_path = directory / META, directory / ARRAYS
        if not meta_path.is_file():
            raise CheckpointError(f"{directory}: no {META}; nothing to resume (run without --resume)")
        try:
            meta = json.loads(meta_path.read_text())
            payload = arrays_path.read_bytes()
            if hashlib.sha256(payload).hexdigest() != meta["arrays_sha256"]:
                raise ValueError(f"{ARRAYS} does not match {META}")
            with np.load(io.BytesIO(payload)) as arrays:
                weights = arrays["weights"]
                optimizer = {k.split(".", 1)[1]: arrays[k] for k in arrays.files if k.startswith("optimizer.")}
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{directory}: the checkpoint is damaged ({exc}); resume from another one") from None
        if expected_hash is not None and meta["config_hash"] != expected_hash:
            raise CheckpointError(
                f"{directory}: the checkpoint belongs to a different run configuration "
                f"({meta['config_hash'][:12]} vs {expected_hash[:12]}); resume with the same settings or start afresh"
            )
        optimizer.update(meta.get("optimizer_scalars", {}))
        return cls(meta["round"], weights, meta["config_hash"], optimizer, meta.get("history", []), meta.get("extra", {}))


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / META).is_file()
