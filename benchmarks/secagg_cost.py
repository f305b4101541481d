"""Cost of our SecAgg+ core per round: bytes on the wire per client and compute time.

For each number of clients and adapter size, one complete in-memory round (common.secagg
``run_round``: every client, every stage, every message through its record form — nothing
sampled or extrapolated) reports:

- bytes per client: everything that client sends and receives in the five stages (record keys
  plus payload, see ``record_nbytes``), averaged over clients, against the plaintext float32
  adapter (4 bytes x params); goal: ratio <= 1.05;
- client compute: protocol time of one client in the round (all stages, quantization and
  masking included), mean and max over clients;
- server compute: the server's protocol time in the round (relaying, summing, unmasking, decoding).

Then, for every (clients, params) without dropout, one round of Flower's own SecAgg+
(``SecAggPlusWorkflow`` in ``DefaultWorkflow``, legacy ``NumPyClient`` + ``secaggplus_mod``, flwr's
Ray simulation engine) on the same sizes, run in a subprocess (``_flower_secaggplus_run.py``) and
set beside ours: Flower's wall seconds of the fit round (after a warm-up, so without Ray
start-up), its bytes per client (measured on its messages), its server and per-client time, and
the ratios ours / Flower's.

Then what the defences against a malicious server and malicious shops cost (``--overhead``,
default 100 clients x 300k parameters), over a run (``--overhead-rounds``, default 16) in which
each shop keeps its key batches (``--batch-depth``: one signature per shop per 2**depth rounds)
and each verifier its checked signatures: per round and for the run, the protocol compute, the
part spent in Ed25519 signatures and verifications, the batches' Merkle hashing, the consistency
stage, sealing each share kind on its own and the server opening every revealed share, the
colluder checks and the projection of the sum, and the round without them (the protocol before
those defences); goal: at most +5%.
And how a client's bytes and compute grow with the number of clients (``--scale``, default 10,
100 and 1,000 clients x 100k parameters): with log n, not n (the degree k follows Bell et al.'s
bounds, see ``common/secagg/graph``).

Usage::

    python benchmarks/secagg_cost.py [--clients 10 100] [--params 300000 1000000] [--dropout 0.1]
                                     [--quick] [--skip-flower] [--flower-timeout 300]
                                     [--overhead 100 300000] [--overhead-rounds 16] [--batch-depth 4]
                                     [--scale 10 100 1000] [--scale-params 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedinterest.common.secagg import SecAggConfig, Stage, record_nbytes, run_round
from fedinterest.common.secagg import neighbour_graph
from fedinterest.common.secagg.keybatch import DEFAULT_BATCH_DEPTH, MAX_BATCH_DEPTH


class LazyUpdates:
    """Per-client float32 updates made on demand, so 100 x 1M parameters never sit in memory at once."""

    def __init__(self, clients: int, params: int, seed: int = 0) -> None:
        self.clients, self.params, self.seed = clients, params, seed

    def __len__(self) -> int:
        return self.clients

    def __getitem__(self, k: int) -> np.ndarray:
        return np.random.default_rng((self.seed, k)).normal(0.0, 0.02, self.params).astype(np.float32)


def plaintext_weighted_mean(updates: LazyUpdates, weights: list[int], members: list[int], clip: float) -> np.ndarray:
    total = np.zeros(updates.params)
    for k in members:
        total += weights[k] * np.clip(updates[k].astype(np.float64), -clip, clip)
    return total / sum(weights[k] for k in members)


def measure(clients: int, params: int, dropout: float, seed: int) -> dict:
    config = SecAggConfig(vector_length=params, max_clients=clients, clip=1.0, max_weight=10_000)
    updates = LazyUpdates(clients, params, seed)
    weights = [2 ** int(e) for e in np.random.default_rng(seed).integers(7, 14, clients)]  # public buckets 128..8192
    dropped = set(range(0, clients, max(1, round(1 / dropout)))) if dropout > 0 else set()
    start = time.perf_counter()
    trace = run_round(updates, weights, config, dropouts={Stage.MASKED_INPUT: dropped}, seed=seed)
    wall = time.perf_counter() - start
    live = [k for k in range(clients) if k not in dropped]
    expected = plaintext_weighted_mean(updates, weights, live, config.clip)
    error = float(np.abs(trace.result.mean - expected).max())
    bound = len(live) / (config.scale * sum(weights[k] for k in live))
    per_client = [trace.wire_bytes(k) for k in live]
    seconds = [trace.client_seconds[k] for k in live]
    return {
        "clients": clients, "params": params, "dropped": len(dropped),
        "degree": round_graph(clients).degree, "threshold": round_graph(clients).threshold,
        "bytes": float(np.mean(per_client)), "ratio": float(np.mean(per_client)) / (4 * params),
        "client_mean": float(np.mean(seconds)), "client_max": float(np.max(seconds)),
        "server": trace.server_seconds, "wall": wall, "error": error, "bound": bound, "frac_bits": config.frac_bits,
    }


def round_graph(clients: int):
    """The graph (degree, threshold) our rounds use for ``clients``: Bell et al.'s bounds at the defaults."""
    defaults = SecAggConfig(vector_length=1, max_clients=max(clients, 2))
    return neighbour_graph(range(clients), bytes(32), None, defaults.colluders, defaults.dropout_fraction)


FLOWER_RUNNER = Path(__file__).with_name("_flower_secaggplus_run.py")
QUICK_CLIENTS, QUICK_PARAMS = [5, 10], [20_000]
FULL_CLIENTS, FULL_PARAMS = [10, 100], [300_000, 1_000_000]


def flower_environment(work: Path) -> dict[str, str]:
    """Environment of the Flower subprocess: no telemetry, no runtime installs, and a private
    FLWR_HOME and client-timing folder inside ``work`` (a temporary folder the caller removes)."""
    (work / "flwr_home").mkdir()
    (work / "client_timings").mkdir()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # own Ray instance
    env.update({
        "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(work / "flwr_home"),
        "FEDINTEREST_FLOWER_TIMING_DIR": str(work / "client_timings"),  # = the runner's TIMING_DIR_ENV
        "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1",
    })
    return env


def run_isolated(command: list[str], env: dict[str, str], log_path: Path, timeout: float) -> str:
    """Run ``command`` in its own session, all output to ``log_path``; "ok", "timeout" or "exit <rc>".

    Whatever the outcome, the whole process group (the runner, Ray's GCS, raylet and workers) is
    terminated afterwards, so no Ray process outlives the run: SIGTERM first (the runner shuts Ray
    down on it), then SIGKILL for anything left.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
            outcome = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            outcome = "timeout"
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
    return outcome


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _log_tail(log_path: Path, lines: int = 6) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def compare_with_flower_secaggplus(clients: int, params: int, *, seed: int = 0, timeout: float = 300.0,
                                   client_cpus: float = 1.0) -> dict:
    """One round of Flower's own SecAgg+ on ``clients`` x ``params``, timed in a subprocess.

    Flower is configured like ours: ``num_shares`` = our degree k + 1 (k neighbours and oneself),
    ``reconstruction_threshold`` = our t, ``clipping_range`` = our clip (1.0), ``max_weight`` =
    10000 (our weights are powers of two 128..8192), Flower's default 2^22 quantization range and 2^32 modulus.
    Returns the runner's JSON (see ``_flower_secaggplus_run.py``): ``status`` ("ok", "timeout"
    or "error"), ``wall`` (s, fit round), ``server``, ``client_mean``, ``client_max``, ``bytes``
    (per client, both directions, measured) and ``error``, plus ``ratio`` = bytes / (4 x params)
    like :func:`measure`; on failure ``reason`` says why.
    """
    graph = round_graph(clients)
    with tempfile.TemporaryDirectory(prefix="flwr_secaggplus_") as tmp:
        out, log_path = Path(tmp) / "result.json", Path(tmp) / "flower.log"
        command = [
            sys.executable, str(FLOWER_RUNNER), "--clients", str(clients), "--params", str(params),
            "--degree", str(graph.degree), "--threshold", str(graph.threshold), "--clip", "1.0",
            "--seed", str(seed), "--client-cpus", str(client_cpus), "--out", str(out),
        ]
        outcome = run_isolated(command, flower_environment(Path(tmp)), log_path, timeout)
        if out.exists():
            result = json.loads(out.read_text(encoding="utf-8"))
        else:
            result = {"status": "timeout" if outcome == "timeout" else "error"}
        if outcome == "timeout":
            result.update(status="timeout", reason=f"no result within {timeout:.0f} s (killed)")
        elif result.get("status") != "ok":
            result.setdefault("reason", f"runner {outcome}: {_log_tail(log_path)}")
    result.update(clients=clients, params=params)
    if result.get("status") == "ok":
        result["ratio"] = result["bytes"] / (4 * params)
    return result


def compute_seconds(row: dict) -> float:
    """Protocol compute of a whole round on one core: clients one after another, plus the server."""
    return row["clients"] * row["client_mean"] + row["server"]


def print_flower_comparison(ours: dict[tuple[int, int], dict], args: argparse.Namespace) -> None:
    """Run Flower's SecAgg+ for every (clients, params) in ``ours``; print it beside ours in two tables.

    The first table (per round: wall seconds, bytes, ratios) is printed row by row as the Flower
    runs finish; the second (where Flower's time goes, compute against compute) at the end.
    """
    print()
    print(f"Flower's own SecAgg+ (flwr SecAggPlusWorkflow in DefaultWorkflow, NumPyClient + secaggplus_mod, "
          f"Ray simulation, num_cpus={args.flower_client_cpus:g} per client actor) vs ours: same n, params, "
          f"k+1 shares, t, clip 1.0; no dropout; each Flower run in its own process, capped at "
          f"{args.flower_timeout:.0f} s")
    print("Flower s/round = wall of the fit workflow (4 stages incl. Ray transport, server unmasking, FedAvg), "
          "measured in the ServerApp after a warm-up message to every client (Ray start-up excluded), byte "
          "counting excluded; ours s/round = our round wall above (ALL clients one after another in one "
          "process, plus the server)")
    print("Flower B/client = MEASURED payload of all its messages to and from each client in the round "
          "(record keys + values, no protobuf framing), mean over clients; ours/Fl < 1 means ours is "
          "faster / smaller")
    print(f"{'clients':>7} {'params':>9} {'shares':>6} {'t':>2} {'Flower s/round':>14} {'ours s/round':>12} "
          f"{'s ours/Fl':>9} {'Flower B/client':>15} {'Fl B/param':>10} {'ours B/client':>13} {'B ours/Fl':>9} "
          f"{'Fl max err':>10}")
    flowers: dict[tuple[int, int], dict] = {}
    for (clients, params), mine in ours.items():
        flower = compare_with_flower_secaggplus(clients, params, seed=args.seed, timeout=args.flower_timeout,
                                                client_cpus=args.flower_client_cpus)
        lead = f"{clients:>7} {params:>9}"
        if flower.get("status") != "ok":
            print(f"{lead}  Flower run {flower.get('status', 'error')} (skipped): {flower.get('reason', '?')}; "
                  f"ours s/round {mine['wall']:.2f}", flush=True)
            continue
        flowers[(clients, params)] = flower
        print(f"{lead} {flower['num_shares']:>6} {flower['threshold']:>2} {flower['wall']:>14.2f} "
              f"{mine['wall']:>12.2f} {mine['wall'] / flower['wall']:>9.3f} {flower['bytes']:>15,.0f} "
              f"{flower['bytes'] / params:>10.2f} {mine['bytes']:>13,.0f} {mine['bytes'] / flower['bytes']:>9.3f} "
              f"{flower.get('error', float('nan')):>10.2e}", flush=True)
    if flowers:
        print_flower_breakdown(ours, flowers)


def print_flower_breakdown(ours: dict[tuple[int, int], dict], flowers: dict[tuple[int, int], dict]) -> None:
    """Where Flower's round time goes, and protocol compute against protocol compute."""
    print()
    print("Where Flower's round goes: the four stages' wall (s); server s = round wall minus waiting for "
          "replies (GIL shared with Flower's in-process engine threads); client s = one ClientApp's time on "
          "the 4 messages in its Ray actor (secaggplus_mod + fit); the rest of the wall is Flower's engine and "
          "Ray transport (plus 0.1 s reply polling per stage)")
    print("compute s = n x client s mean + server s: the round's protocol compute on one core, for both; "
          "warm-up = Ray start-up and first message, not in the round")
    print(f"{'clients':>7} {'params':>9} {'setup':>6} {'share':>6} {'masked':>6} {'unmask':>6} "
          f"{'Fl server s':>11} {'Fl client s':>11} {'Fl client max':>13} {'Fl compute s':>12} "
          f"{'ours compute s':>14} {'compute ours/Fl':>15} {'Fl warm-up s':>12}")
    for key, flower in flowers.items():
        mine, stages = ours[key], flower["stages"]
        print(f"{key[0]:>7} {key[1]:>9} {stages.get('setup_stage', 0):>6.2f} {stages.get('share_keys_stage', 0):>6.2f} "
              f"{stages.get('collect_masked_vectors_stage', 0):>6.2f} {stages.get('unmask_stage', 0):>6.2f} "
              f"{flower['server']:>11.2f} {flower['client_mean']:>11.3f} {flower['client_max']:>13.3f} "
              f"{compute_seconds(flower):>12.2f} {compute_seconds(mine):>14.2f} "
              f"{compute_seconds(mine) / compute_seconds(flower):>15.3f} {flower.get('warm_up', float('nan')):>12.1f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=None,
                        help=f"numbers of clients (default {FULL_CLIENTS}, with --quick {QUICK_CLIENTS})")
    parser.add_argument("--params", type=int, nargs="+", default=None,
                        help=f"adapter sizes (default {FULL_PARAMS}, with --quick {QUICK_PARAMS})")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="also run the largest setting with this fraction dropping after sharing (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    parser.add_argument("--skip-flower", action="store_true", help="do not run Flower's SecAgg+ for comparison")
    parser.add_argument("--flower-timeout", type=float, default=300.0,
                        help="seconds one Flower run (Ray start-up included) may take before it is killed")
    parser.add_argument("--flower-client-cpus", type=float, default=1.0,
                        help="Ray num_cpus per Flower client actor (1.0: as many concurrent clients as cores)")
    parser.add_argument("--overhead", type=int, nargs=2, default=None, metavar=("CLIENTS", "PARAMS"),
                        help="time the malicious-server defences in one round (default 100 300000; 0 0: skip)")
    parser.add_argument("--overhead-rounds", type=int, default=16,
                        help="rounds in the --overhead run (default 16: one key batch)")
    parser.add_argument("--batch-depth", type=int, default=DEFAULT_BATCH_DEPTH,
                        help=f"key batches of 2**depth rounds in the --overhead run (default {DEFAULT_BATCH_DEPTH})")
    parser.add_argument("--scale", type=int, nargs="*", default=None,
                        help="clients for the per-client scaling table (default 10 100 1000; none: skip)")
    parser.add_argument("--scale-params", type=int, default=100_000)
    args = parser.parse_args()
    if args.overhead_rounds < 1 or not 0 <= args.batch_depth <= MAX_BATCH_DEPTH:
        parser.error(f"--overhead-rounds must be at least 1 and --batch-depth in [0, {MAX_BATCH_DEPTH}]")
    if args.overhead is None:
        args.overhead = (20, 20_000) if args.quick else (100, 300_000)
    if args.overhead == [0, 0]:
        args.overhead = None
    if args.scale is None:
        args.scale = [5, 10, 20] if args.quick else [10, 100, 1000]
    args.clients = args.clients or (QUICK_CLIENTS if args.quick else FULL_CLIENTS)
    args.params = args.params or (QUICK_PARAMS if args.quick else FULL_PARAMS)
    return args


def print_our_table(args: argparse.Namespace) -> dict[tuple[int, int], dict]:
    """Measure and print our rounds; returns the rows without dropout, keyed by (clients, params)."""
    print(f"our SecAgg+ core, exact full rounds (every client run and timed); CPU cores: {os.cpu_count()}")
    print("bytes/client = all five stages, both directions; plaintext = 4 B x params (float32 adapter); "
          "client s = one client's protocol time in the round; round wall s also includes making the updates")
    header = (f"{'clients':>7} {'params':>9} {'drop':>4} {'k':>3} {'t':>2} {'bytes/client':>13} {'ratio':>7} "
              f"{'client s mean':>13} {'client s max':>12} {'server s':>8} {'round wall s':>12} "
              f"{'max err':>9} {'err bound':>9}")
    print(header)
    measure(5, 1000, 0.0, args.seed)  # warm-up: imports, first AES and numpy calls
    settings = [(n, p, 0.0) for n in args.clients for p in args.params]
    if args.dropout > 0:
        settings.append((max(args.clients), max(args.params), args.dropout))
    rows: dict[tuple[int, int], dict] = {}
    for clients, params, dropout in settings:
        r = measure(clients, params, dropout, args.seed)
        print(f"{r['clients']:>7} {r['params']:>9} {r['dropped']:>4} {r['degree']:>3} {r['threshold']:>2} "
              f"{r['bytes']:>13,.0f} {r['ratio']:>7.4f} {r['client_mean']:>13.3f} {r['client_max']:>12.3f} "
              f"{r['server']:>8.3f} {r['wall']:>12.1f} {r['error']:>9.2e} {r['bound']:>9.2e}", flush=True)
        assert r["error"] < r["bound"] + 1e-12, "aggregate outside the stated quantization bound"
        if dropout == 0:
            rows[(clients, params)] = r
    return rows


class DefenceClock:
    """Times the defences' own work (wrapping it for the benchmark only): Ed25519 signatures and
    verifications, and the key batches' Merkle hashing (leaves, trees, paths, the signature cache).

    Nested calls are timed once, by the outermost; ``ed25519`` counts the signatures made and
    verified. A batch's key generation is not a defence: it is the per-round key generation of the
    protocol before, done for the batch's rounds at once.
    """

    TIMED = (("identity", "Identity.sign"), ("keybatch", "verify"), ("keybatch", "leaf_hash"),
             ("keybatch", "merkle_levels"), ("client", "verify_advertisement"), ("server", "verify_advertisement"),
             # against malicious shops: the server opens every revealed share (a lie is caught alone), a
             # client seals and opens each share kind on its own (counted whole: the protocol before sealed
             # and opened both kinds at once), the round's size is checked against the roster's colluders,
             # and the sum is projected onto the bounds
             ("server", "open_once"), ("client", "seal_once"), ("client", "open_once"), ("policy", "threshold_for"),
             ("server", "bound_sum"))

    def __init__(self) -> None:
        self.seconds, self.ed25519, self._depth = 0.0, 0, 0

    def _timed(self, function, ed25519: bool):
        def call(*args, **kwargs):
            self.ed25519 += ed25519
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self._depth -= 1
        return call

    def _targets(self):
        import importlib

        for module_name, path in self.TIMED:
            owner = importlib.import_module(f"fedinterest.common.secagg.{module_name}")
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            yield owner, name, path in ("Identity.sign", "verify")

    def __enter__(self) -> "DefenceClock":
        self._saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self._targets()]
        for owner, name, ed25519 in self._targets():
            setattr(owner, name, self._timed(getattr(owner, name), ed25519))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, function in self._saved:
            setattr(owner, name, function)


def defence_overhead(clients: int, params: int, seed: int, rounds: int, depth: int) -> list[dict]:
    """A run of ``rounds`` rounds with every stage timed: the defences' work against the rest.

    Each shop keeps its keyring (key batches of ``2**depth`` rounds, verified signatures) and the
    server its signature cache across the run, as deployed nodes and the ServerApp do. Per round,
    the defences' cost = signatures, verifications and batch hashing (:class:`DefenceClock`) + the
    consistency stage's other work; the round without them is what the protocol cost before the
    defences.
    """
    from fedinterest.common.secagg import (
        Identity, Keyring, Roster, SecAggClient, SecAggPolicy, SecAggServer, SeededRandomness, SignatureCache,
    )

    config = SecAggConfig(vector_length=params, max_clients=clients, clip=1.0, max_weight=10_000)
    updates = LazyUpdates(clients, params, seed)
    keys = {i: Identity.generate(SeededRandomness(seed, "identity", i)) for i in range(clients)}
    roster = Roster({f"shop-{i}": keys[i].public_key for i in range(clients)})
    policy = SecAggPolicy(max_clip=config.clip, max_weight=config.max_weight)
    keyrings = {i: Keyring(depth) for i in range(clients)}
    verified = SignatureCache()
    out = []
    for round_id in range(1, rounds + 1):
        server = SecAggServer(config, round_id, range(clients), 0, roster, verified)
        parties = {i: SecAggClient(i, keys[i], roster, policy, 0, SeededRandomness(seed, "client", round_id, i),
                                   keyrings[i]) for i in range(clients)}
        seconds: dict[str, float] = {}
        defended: dict[str, float] = {}
        wire = [0]  # bytes of every request and reply, as records
        with DefenceClock() as clock:
            def stage(name, collect, requests, act):
                before, replies = clock.seconds, []
                for i, request in requests.items():
                    update = (updates[i],) if name == "masked input" else ()  # making the update is not protocol
                    begun = time.perf_counter()
                    replies.append(act(parties[i], request, *update))
                    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begun
                    wire[0] += record_nbytes(request.to_record()) + record_nbytes(replies[-1].to_record())
                begun = time.perf_counter()
                out_ = collect(replies)
                seconds[name] += time.perf_counter() - begun
                defended[name] = clock.seconds - before
                return out_

            setup = server.setup()
            ads = stage("advertise", server.collect_keys, {i: setup for i in parties},
                        lambda c, m: c.advertise_keys(m))
            relays = stage("share keys", server.collect_shares, ads, lambda c, m: c.share_keys(m))
            checks = stage("masked input", server.collect_masked_inputs, relays,
                           lambda c, m, x: c.mask_input(m, x, 64))
            requests = stage("consistency", server.collect_signatures, checks, lambda c, m: c.sign_survivors(m))
            result = stage("unmask", server.collect_unmask_responses, requests, lambda c, m: c.unmask(m))
        assert result.total_weight == 64 * clients
        total = sum(seconds.values())
        added = sum(defended.values()) + seconds["consistency"] - defended["consistency"]
        out.append({"round": round_id, "total": total, "signatures": sum(defended.values()), "ed25519": clock.ed25519,
                    "consistency": seconds["consistency"], "added": added, "before": total - added,
                    "stages": seconds, "ratio": wire[0] / clients / (4 * params)})
    return out


def print_defence_overhead(args: argparse.Namespace) -> None:
    """Every round of a run, and the run: one signature per shop per batch, one check per batch."""
    clients, params = args.overhead
    rounds, depth = args.overhead_rounds, args.batch_depth
    runs = defence_overhead(clients, params, args.seed, rounds, depth)
    print()
    print(f"defences against a malicious server and malicious shops, a run of {rounds} rounds of {clients} clients x {params:,} "
          f"parameters, key batches of {2**depth} rounds (protocol compute of all clients and the server, one core):")
    print("  Ed25519 ops = signatures + verifications actually run (a batch's signature is checked once per "
          "verifier); defences = those, the batches' Merkle hashing, the consistency stage, sealing each share "
          "kind alone (counted whole), opening revealed shares, the colluder checks and the projection")
    print("  bytes ratio = all messages of the round, both directions, per client / the float32 adapter")
    print(f"  {'round':>5} {'round s':>8} {'before s':>8} {'defences s':>10} {'Ed25519 ops':>11} {'added':>7} "
          f"{'bytes ratio':>11}")
    for r in runs:
        print(f"  {r['round']:>5} {r['total']:>8.2f} {r['before']:>8.2f} {r['added']:>10.3f} {r['ed25519']:>11,} "
              f"{100 * r['added'] / r['before']:>+6.1f}% {r['ratio']:>11.4f}")
    before, added = sum(r["before"] for r in runs), sum(r["added"] for r in runs)
    later = runs[1:] or runs
    later_share = sum(r["added"] for r in later) / sum(r["before"] for r in later)
    print(f"  run: {before + added:.1f} s = without the defences {before:.1f} s + defences {added:.2f} s -> "
          f"+{100 * added / before:.1f}% (goal <= 5%); round 1 +{100 * runs[0]['added'] / runs[0]['before']:.1f}%, "
          f"rounds 2-{rounds} +{100 * later_share:.1f}%")


def print_scaling(args: argparse.Namespace) -> None:
    print()
    print(f"per-client cost against the number of clients, {args.scale_params:,} parameters, no dropout "
          "(k, t from Bell et al.'s bounds for ⌈0.2 n⌉ colluders, dropout 0.1):")
    print(f"{'clients':>7} {'k':>4} {'t':>3} {'bytes/client':>13} {'ratio':>7} {'client s mean':>13} {'server s':>8}")
    for clients in args.scale:
        r = measure(clients, args.scale_params, 0.0, args.seed)
        print(f"{clients:>7} {r['degree']:>4} {r['threshold']:>3} {r['bytes']:>13,.0f} {r['ratio']:>7.3f} "
              f"{r['client_mean']:>13.3f} {r['server']:>8.2f}", flush=True)


def main() -> None:
    args = parse_args()
    ours = print_our_table(args)
    if args.overhead:
        print_defence_overhead(args)
    if args.scale:
        print_scaling(args)
    if not args.skip_flower:
        print_flower_comparison(ours, args)


if __name__ == "__main__":
    main()
