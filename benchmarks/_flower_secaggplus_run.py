"""Subprocess entry point: one timed round of Flower's own SecAgg+ in Flower's simulation engine.

Started by ``benchmarks/secagg_cost.py`` (``compare_with_flower_secaggplus``) in its own process,
so Ray's state, processes and logs stay out of the benchmark. Runs Flower's simulation engine
(``simulations.runner.in_process_engine``, Ray backend) with ``--clients`` virtual clients: each is a legacy
``NumPyClient`` whose ``fit`` returns a fixed random float32 vector of ``--params`` values,
wrapped into a ``ClientApp`` with ``secaggplus_mod``; the ``ServerApp`` runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with FedAvg over all clients, no
evaluation. Writes one JSON object (see :func:`summarise`) to ``--out``.

What is measured:

- ``wall``: wall time of the fit workflow's call (all four SecAgg+ stages: configure_fit, the
  four message exchanges through Ray, the server's unmasking and FedAvg.aggregate_fit), minus
  the time spent counting bytes. Ray start-up, actor start and imports are outside: before the
  round every ClientApp answers one legacy ``get_properties`` message (``warm_up`` seconds);
  node registration, parameter init and shutdown are outside too;
- ``bytes`` per client: payload of every message the server sends to or receives from that
  client in the round (record names, keys and values, counted like Flower's
  ``Record.count_bytes``; no protobuf/gRPC framing), counted on the server side outside the timing;
- ``client_*``: per client, the time its ``ClientApp`` spends on the four SecAgg+ messages
  (``secaggplus_mod`` plus ``fit``), measured by an outer mod in the Ray actor;
- ``server``: ``wall`` minus the time the server waits inside ``grid.send_and_receive``;
- ``error``: max |Flower's aggregate - plaintext weighted mean of the clipped vectors|.

Clients receive empty global parameters (no model download), so the round carries SecAgg+
traffic only, as in our ``run_round``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

# Before any flwr import: no telemetry, no runtime installs, a private FLWR_HOME (the parent
# passes its own temporary one; run by hand, one is made here and removed at exit).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if "FLWR_HOME" not in os.environ:
    os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="flwr_home_")
    atexit.register(shutil.rmtree, os.environ["FLWR_HOME"], ignore_errors=True)

import numpy as np  # noqa: E402

import flwr.compat.common.recorddict_compat as compat  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, RecordDict  # noqa: E402
from flwr.app.message_type import MessageType  # noqa: E402
from flwr.client import Client, ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp.typing import ClientAppCallable  # noqa: E402
from flwr.common import (  # noqa: E402
    GetPropertiesIns, NDArrays, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays,
)
from flwr.common.constant import MessageTypeLegacy  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key  # noqa: E402
from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from fedinterest.simulations.runner import in_process_engine  # noqa: E402

TIMING_DIR_ENV = "FEDINTEREST_FLOWER_TIMING_DIR"  # where client actors append their stage timings
STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")


# ---------------------------------------------------------------- the clients' data (deterministic)

def client_vector(seed: int, client: int, params: int) -> np.ndarray:
    """The fixed float32 update of ``client``: uniform in [-0.05, 0.05), cheap to make."""
    rng = np.random.default_rng((seed, client))
    return rng.random(params, dtype=np.float32) * np.float32(0.1) - np.float32(0.05)


def client_weights(seed: int, clients: int) -> list[int]:
    """``num_examples`` per client, drawn like the weights of our benchmark (powers of two 128..8192)."""
    return [2 ** int(e) for e in np.random.default_rng(seed).integers(7, 14, clients)]


def plaintext_weighted_mean(seed: int, clients: int, params: int, clip: float) -> np.ndarray:
    """What secure aggregation must reproduce: sum_k w_k clip(x_k) / sum_k w_k."""
    weights = client_weights(seed, clients)
    total = np.zeros(params)
    for k in range(clients):
        total += weights[k] * np.clip(client_vector(seed, k, params).astype(np.float64), -clip, clip)
    return total / sum(weights)


# ---------------------------------------------------------------- client side

class FixedVectorClient(NumPyClient):
    """Legacy NumPyClient whose ``fit`` ignores the global parameters and returns a fixed vector."""

    def __init__(self, seed: int, client: int, params: int, weight: int) -> None:
        self.seed, self.client, self.params, self.weight = seed, client, params, weight

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return []

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [client_vector(self.seed, self.client, self.params)], self.weight, {}


def stage_timing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Outermost client mod: times each SecAgg+ message (secaggplus_mod + fit) of this node.

    Appends one JSON line per message to ``$FEDINTEREST_FLOWER_TIMING_DIR/<pid>.jsonl`` (each Ray
    actor its own file); does nothing else.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "?"))
    start = time.perf_counter()
    reply = call_next(msg, ctxt)
    seconds = time.perf_counter() - start
    timing_dir = os.environ.get(TIMING_DIR_ENV)
    if timing_dir:
        line = {"node": msg.metadata.dst_node_id, "round": msg.metadata.group_id, "stage": stage, "seconds": seconds}
        with open(Path(timing_dir) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
    return reply


def make_client_app(seed: int, params: int, clients: int) -> ClientApp:
    """ClientApp = legacy NumPyClient wrapped with ``secaggplus_mod`` (and the timing mod outside it)."""
    weights = client_weights(seed, clients)

    def client_fn(context: Context) -> Client:
        k = int(context.node_config["partition-id"])
        return FixedVectorClient(seed, k, params, weights[k]).to_client()

    return ClientApp(client_fn=client_fn, mods=[stage_timing_mod, secaggplus_mod])


# ---------------------------------------------------------------- server side

def record_payload_bytes(content: RecordDict) -> tuple[int, int]:
    """Payload of a message's content, and the part of it in ArrayRecords (model parameters).

    Counts record names, keys and values by Flower's ``count_bytes`` rules: ints/floats 8 bytes
    (64-bit in protobuf), bools 1, str/bytes their length, arrays their serialized data. Written
    out here because ``ConfigRecord.count_bytes`` fails on empty lists. SecAgg+'s masked vectors
    travel as bytes in a ConfigRecord, so they are not in the ArrayRecord part.
    """
    total = arrays = 0
    for name, record in content.items():
        total += len(name)
        if isinstance(record, ArrayRecord):
            size = sum(len(key) + len(array.data) for key, array in record.items())
            total, arrays = total + size, arrays + size
            continue
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            total += len(key) + sum(_scalar_bytes(v) for v in values)
    return total, arrays


def _scalar_bytes(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    return len(value)  # str or bytes


class MeasuringGrid:
    """Wraps the Grid the fit workflow talks through: counts payload bytes per node, times waits."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.bytes_per_node: dict[int, int] = defaultdict(int)  # all payload, both directions
        self.array_bytes_per_node: dict[int, int] = defaultdict(int)  # of which in ArrayRecords
        self.wait_seconds = 0.0  # inside grid.send_and_receive (clients working, Ray transport)
        self.count_seconds = 0.0  # spent here counting bytes (subtracted from the round's wall)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        start = time.perf_counter()
        messages = list(messages)
        for msg in messages:
            self._count(msg.metadata.dst_node_id, msg.content)
        sent = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        received = time.perf_counter()
        for reply in replies:
            if reply.has_content():
                self._count(reply.metadata.src_node_id, reply.content)
        self.wait_seconds += received - sent
        self.count_seconds += (sent - start) + (time.perf_counter() - received)
        return replies

    def _count(self, node: int, content: RecordDict) -> None:
        total, arrays = record_payload_bytes(content)
        self.bytes_per_node[node] += total
        self.array_bytes_per_node[node] += arrays

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class TimedFedAvg(FedAvg):
    """FedAvg that times configure_fit / aggregate_fit and keeps the last aggregate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds: dict[str, float] = defaultdict(float)
        self.aggregate: NDArrays | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        start = time.perf_counter()
        result = super().configure_fit(server_round, parameters, client_manager)
        self.seconds["configure_fit"] += time.perf_counter() - start
        return result

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        start = time.perf_counter()
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        self.seconds["aggregate_fit"] += time.perf_counter() - start
        if parameters is not None:
            self.aggregate = parameters_to_ndarrays(parameters)
        return parameters, metrics


class TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAggPlusWorkflow that times each fit round and each stage, and counts bytes per client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[dict[str, Any]] = []
        self._stage_seconds: dict[str, float] = {}
        self._completed: list[str] = []

    def __call__(self, grid: Any, context: Context) -> None:
        measuring = MeasuringGrid(grid)
        self._stage_seconds, self._completed = {}, []
        start = time.perf_counter()
        super().__call__(measuring, context)
        wall = time.perf_counter() - start - measuring.count_seconds
        self.rounds.append({
            "wall": wall, "server": wall - measuring.wait_seconds, "wait": measuring.wait_seconds,
            "count_seconds": measuring.count_seconds, "stages": dict(self._stage_seconds),
            "completed": self._completed == list(STAGES), "bytes_per_node": dict(measuring.bytes_per_node),
            "array_bytes_per_node": dict(measuring.array_bytes_per_node),
        })

    def _timed(self, name: str, stage: Any, grid: Any, context: Any, state: Any) -> bool:
        start = time.perf_counter()
        ok = stage(grid, context, state)
        self._stage_seconds[name] = time.perf_counter() - start
        if ok:
            self._completed.append(name)
        return ok

    def setup_stage(self, grid: Any, context: Any, state: Any) -> bool:
        return self._timed("setup_stage", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
        return self._timed("share_keys_stage", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid: Any, context: Any, state: Any) -> bool:
        return self._timed("collect_masked_vectors_stage", super().collect_masked_vectors_stage, grid, context, state)

    def unmask_stage(self, grid: Any, context: Any, state: Any) -> bool:
        return self._timed("unmask_stage", super().unmask_stage, grid, context, state)


def flower_secaggplus_parameters(clients: int, degree: int, threshold: int, clip: float) -> dict[str, Any]:
    """SecAggPlusWorkflow arguments matching ours: k neighbours + oneself = k + 1 shares, same t."""
    return {
        "num_shares": min(degree + 1, clients), "reconstruction_threshold": threshold,
        "max_weight": 10_000.0, "clipping_range": clip,
        "quantization_range": 2**22, "modulus_range": 2**32,  # Flower's defaults; n * 2^22 < 2^32 for n < 1024
    }


def warm_up(grid: Any, clients: int, timings: dict[str, float]) -> None:
    """Wait for all nodes, then have every ClientApp answer one legacy ``get_properties`` message.

    This brings up Ray, the actors and their imports before the timed round (secaggplus_mod and
    the timing mod let non-train messages through untouched).
    """
    start = time.perf_counter()
    while len(list(grid.get_node_ids())) < clients:
        time.sleep(0.1)
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    messages = [
        Message(content=content, dst_node_id=nid, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="warm-up")
        for nid in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages))
    timings["warm_up"] = time.perf_counter() - start
    timings["warm_up_errors"] = sum(reply.has_error() for reply in replies)


def make_server_app(clients: int, rounds: int, workflow: TimedSecAggPlusWorkflow, strategy: TimedFedAvg,
                    timings: dict[str, float]) -> ServerApp:
    """ServerApp: warm-up, then ``rounds`` fit rounds of ``DefaultWorkflow(fit_workflow=workflow)``."""
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Context) -> None:
        warm_up(grid, clients, timings)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    return app


# ---------------------------------------------------------------- run and report

def read_client_timings(timing_dir: Path) -> list[dict[str, Any]]:
    """All stage timings the client actors appended."""
    lines = []
    for path in sorted(timing_dir.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def summarise(args: argparse.Namespace, workflow: TimedSecAggPlusWorkflow, strategy: TimedFedAvg,
              timings: list[dict[str, Any]], run_seconds: float) -> dict[str, Any]:
    """The JSON result: the last round's numbers (plus every round's wall and stage times)."""
    if not workflow.rounds:
        return {"status": "error", "reason": "the fit workflow never ran", "run_seconds": run_seconds}
    last = workflow.rounds[-1]
    round_id = str(len(workflow.rounds))
    per_node: dict[int, float] = defaultdict(float)
    per_stage: dict[str, list[float]] = defaultdict(list)
    for t in timings:
        if str(t["round"]) == round_id:
            per_node[int(t["node"])] += float(t["seconds"])
            per_stage[str(t["stage"])].append(float(t["seconds"]))
    client_seconds = list(per_node.values())
    node_bytes = list(last["bytes_per_node"].values())
    result: dict[str, Any] = {
        "status": "ok" if last["completed"] else "error",
        "clients": args.clients, "params": args.params, "rounds": len(workflow.rounds),
        "num_shares": workflow.num_shares, "threshold": workflow.reconstruction_threshold,
        "wall": last["wall"], "server": last["server"], "wait": last["wait"], "stages": last["stages"],
        "count_seconds": last["count_seconds"],
        "configure_fit": strategy.seconds["configure_fit"] / len(workflow.rounds),
        "aggregate_fit": strategy.seconds["aggregate_fit"] / len(workflow.rounds),
        "round_walls": [r["wall"] for r in workflow.rounds],
        "bytes": float(np.mean(node_bytes)) if node_bytes else math.nan,
        "model_bytes": float(np.mean(list(last["array_bytes_per_node"].values()) or [0])),
        "client_mean": float(np.mean(client_seconds)) if client_seconds else math.nan,
        "client_max": float(np.max(client_seconds)) if client_seconds else math.nan,
        "client_stage_mean": {stage: float(np.mean(v)) for stage, v in per_stage.items()},
        "client_timed": len(client_seconds), "run_seconds": run_seconds,
    }
    if not last["completed"]:
        result["reason"] = f"SecAgg+ halted after stages {list(last['stages'])}"
    if strategy.aggregate is not None:
        expected = plaintext_weighted_mean(args.seed, args.clients, args.params, args.clip)
        result["error"] = float(np.abs(np.asarray(strategy.aggregate[0], dtype=np.float64) - expected).max())
    return result


def shutdown_ray() -> None:
    """Make sure no Ray runtime outlives this process (Flower's backend normally shuts it down)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One simulation: warm-up, then ``args.rounds`` timed fit rounds; returns :func:`summarise`."""
    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients, min_evaluate_clients=0,
        min_available_clients=args.clients, initial_parameters=ndarrays_to_parameters([]),
    )
    workflow = TimedSecAggPlusWorkflow(**flower_secaggplus_parameters(args.clients, args.degree, args.threshold, args.clip))
    backend_config = {
        "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
        # "local": always a fresh Ray instance of our own, never one someone else started
        "init_args": {"address": "local", "logging_level": "ERROR", "log_to_driver": False},
    }
    warm_up_timings: dict[str, float] = {}
    preset = os.environ.get(TIMING_DIR_ENV)  # the parent passes a folder it cleans up itself
    folder = contextlib.nullcontext(preset) if preset else tempfile.TemporaryDirectory(prefix="flwr_timing_")
    with folder as timing_dir:
        os.environ[TIMING_DIR_ENV] = timing_dir  # inherited by Ray's worker processes
        start = time.perf_counter()
        try:
            in_process_engine(make_server_app(args.clients, args.rounds, workflow, strategy, warm_up_timings),
                              make_client_app(args.seed, args.params, args.clients), args.clients, backend_config)
        finally:
            shutdown_ray()
        run_seconds = time.perf_counter() - start
        timings = read_client_timings(Path(timing_dir))
    return summarise(args, workflow, strategy, timings, run_seconds) | warm_up_timings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--degree", type=int, required=True, help="our neighbour-graph degree k")
    parser.add_argument("--threshold", type=int, required=True, help="our Shamir threshold t")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="fit rounds; the last one is reported")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="Ray num_cpus per client")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks, so Ray is shut down


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args()
    try:
        result = run(args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
