"""The platform's message log: every client reply the ServerApp received, kept for audit.

Run config ``message-log=DIR`` turns it on. Each reply becomes ``NNNNNN-<type>-<node>.json`` (its
records, keys and scalar values) and, when it holds arrays, ``.npz`` beside it: exactly what the
platform holds, so an auditor (or a merchant) can check that nothing but masked vectors and
declared codes ever reached it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedinterest.common.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


class MessageLog:
    """A ``ReplyObserver`` that writes each reply to ``directory``; it never fails the round."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = len(list(self.directory.glob("*.json")))  # a resumed run appends

    def __call__(self, message_type: str, node: int, content: RecordDict) -> None:
        try:
            self._write(message_type, node, content)
        except Exception as exc:  # noqa: BLE001 - auditing must not change what the round does
            log.warning("message log: reply %s from %s not written (%s)", message_type, node, exc)

    def _write(self, message_type: str, node: int, content: RecordDict) -> None:
        stem = f"{self.count:06d}-{message_type.replace('.', '_')}-{node}"
        self.count += 1
        records, arrays = {}, {}
        for name, record in content.items():
            if isinstance(record, ArrayRecord):
                records[name] = {"kind": "arrays", "keys": list(record.keys())}
                for key, array in record.items():
                    arrays[f"{name}/{key}"] = array.numpy()
            else:
                records[name] = {"kind": type(record).__name__, "items": {k: _plain(v) for k, v in record.items()}}
        if arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(self.directory / f"{stem}.npz", buffer.getvalue())
        atomic_write_text(self.directory / f"{stem}.json",
                          json.dumps({"type": message_type, "node": node, "records": records}, sort_keys=True))


def _plain(value):
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_message_log(directory: str | Path) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Every logged reply in order: its JSON description and its arrays by ``record/key``."""
    entries = []
    for path in sorted(Path(directory).glob("*.json")):
        arrays_path = path.with_suffix(".npz")
        arrays = dict(np.load(arrays_path)) if arrays_path.exists() else {}
        entries.append((json.loads(path.read_text()), arrays))
    return entries
