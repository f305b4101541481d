"""Which secure rounds this shop has joined, and which adapters it evaluated: kept on disk, per run.

A server that re-runs a round would get a second release from the same data (and, on a seeded
simulation, the same secrets). The shop records every (run, SecAgg round) it opens in
``<state-dir>/secagg_rounds.json`` under a lock, before it touches its data, and refuses one it has
already opened. Evaluation rounds have their own ids (``wire.EVALUATION_ROUND_BASE + r``), so a
shop evaluates at most once per round.

It also keeps the digest of each adapter it evaluated. The platform may not score any adapter
it likes on the shop's customers: a shop evaluates only after the last training round whose
aggregation it took part in (it reached that round's unmasking), once; the adapter it evaluated
after round r must be the one the federation trains round r + 1 from, and a shop refuses to train
from anything else. Within a round every neighbour vouches for the same adapter digest in the
consistency check (``secagg.identity.survivors_payload``), so the server cannot show different
shops different adapters either. Statistics rounds take the ids ``wire.STATISTICS_ROUNDS``, one per
kind, never a training round's id.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedinterest.common.atomic import private_dir
from fedinterest.common.secagg import SecAggProtocolError

ROUNDS_FILE = "secagg_rounds.json"


@contextmanager
def _run_record(state_dir: str | Path, run_id: int) -> Iterator[dict]:
    """This run's record (``rounds``, ``trained``, ``evaluated``), read and written back under a lock."""
    state = private_dir(state_dir)
    path = state / ROUNDS_FILE
    with open(state / (ROUNDS_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seen: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
        record = seen.setdefault(str(run_id), {})
        if isinstance(record, list):  # the first format: the opened rounds only
            record = seen[str(run_id)] = {"rounds": record}
        record.setdefault("rounds", [])
        record.setdefault("evaluated", {})
        before = json.dumps(seen, sort_keys=True)
        yield record
        if json.dumps(seen, sort_keys=True) != before:
            fd, tmp = tempfile.mkstemp(dir=state, prefix=".rounds-")
            with os.fdopen(fd, "w") as handle:
                json.dump(seen, handle)
            os.replace(tmp, path)


def claim_round(state_dir: str | Path, run_id: int, round_id: int) -> None:
    """Record that this shop opens ``round_id`` of ``run_id``; raise if it already did."""
    with _run_record(state_dir, run_id) as record:
        if round_id in record["rounds"]:
            raise SecAggProtocolError(f"round {round_id} of run {run_id} was opened before on this shop; "
                                      "refusing a replayed round")
        record["rounds"].append(round_id)


def claim_training(state_dir: str | Path, run_id: int, server_round: int, digest: str) -> None:
    """Check that round ``server_round`` starts from the adapter this shop evaluated after the round before."""
    with _run_record(state_dir, run_id) as record:
        pinned = record["evaluated"].get(str(server_round - 1))
        if pinned is not None and pinned != digest:
            raise SecAggProtocolError(f"round {server_round} of run {run_id} starts from an adapter other than the "
                                      f"one this shop evaluated after round {server_round - 1}; refusing it")
        record["trained"] = max(int(record.get("trained", 0)), server_round)


def claim_aggregated(state_dir: str | Path, run_id: int, server_round: int) -> None:
    """Record that this shop's update of training round ``server_round`` went into the aggregation."""
    with _run_record(state_dir, run_id) as record:
        record["aggregated"] = max(int(record.get("aggregated", 0)), server_round)


def claim_evaluation(state_dir: str | Path, run_id: int, server_round: int, digest: str) -> None:
    """Pin ``digest`` as the adapter of round ``server_round``; refuse any round but the last aggregation this
    shop took part in, and a repeated evaluation."""
    with _run_record(state_dir, run_id) as record:
        aggregated, trained = int(record.get("aggregated", 0)), int(record.get("trained", 0))
        if server_round != aggregated or trained > aggregated:
            raise SecAggProtocolError(
                f"evaluation of round {server_round} of run {run_id}: this shop evaluates only the adapter of the "
                f"last aggregation it took part in (round {aggregated or 'none'}"
                f"{f', and it has trained round {trained} since' if trained > aggregated else ''})")
        if str(server_round) in record["evaluated"]:
            raise SecAggProtocolError(f"round {server_round} of run {run_id} was evaluated before on this shop")
        record["evaluated"][str(server_round)] = digest
