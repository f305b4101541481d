"""Which secure rounds this shop has joined: a replayed (run, round) is refused, across restarts.

A server that re-runs a round would get a second release from the same data (and, on a seeded
simulation, the same secrets). The shop records every (run, SecAgg round) it opens in
``<state-dir>/secagg_rounds.json`` under a lock, before it touches its data, and refuses one it has
already opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

from common.secagg import SecAggProtocolError

ROUNDS_FILE = "secagg_rounds.json"


def claim_round(state_dir: str | Path, run_id: int, round_id: int) -> None:
    """Record that this shop opens ``round_id`` of ``run_id``; raise if it already did."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = state / ROUNDS_FILE
    with open(state / (ROUNDS_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seen: dict[str, list[int]] = json.loads(path.read_text()) if path.is_file() else {}
        rounds = seen.setdefault(str(run_id), [])
        if round_id in rounds:
            raise SecAggProtocolError(f"round {round_id} of run {run_id} was opened before on this shop; "
                                      "refusing a replayed round")
        rounds.append(round_id)
        fd, tmp = tempfile.mkstemp(dir=state, prefix=".rounds-")
        with os.fdopen(fd, "w") as handle:
            json.dump(seen, handle)
        os.replace(tmp, path)
