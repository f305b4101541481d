"""Latency and throughput of `fedinterest serve` at concurrency 1, 8 and 64.

Starts the server as a subprocess on an export (``--adapter``, or a random adapter on
``--backbone``, default tiny, built here), then fires one-user requests of 20-50 events each,
that many in flight at a time (one asyncio keep-alive connection each), and prints per
concurrency: requests, p50 and p99 latency, requests/s and the mean batch size the server formed
(from /metrics). Usage:

    python benchmarks/serve_latency.py                                # tiny backbone, built offline
    python benchmarks/serve_latency.py --backbone minilm              # the default backbone
    python benchmarks/serve_latency.py --adapter runs/demo-user/federation/export

Events are synthetic: sticky runs over the export's taxonomy categories (mostly views).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def build_export(out: Path, backbone: str) -> Path:
    """A random (non-zero) adapter on ``backbone`` over a small synthetic shop's taxonomy."""
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.model import get_adapter_state
    from fedinterest.common.task import prepare_task
    from fedinterest.common.task.priors import Priors
    from fedinterest.server.export import export_model
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    write_synthetic(out / "data", SynthConfig(shops=1, users=60, days=10, seed=3))
    task = prepare_task(load_events(out / "data"), TaskConfig())
    taxonomy, n = task.taxonomy, task.taxonomy.n_classes
    shared = SharedModel(ModelConfig(backbone=backbone), taxonomy.class_names, "cpu")
    rng = np.random.default_rng(0)
    state = {k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype) for k, v in get_adapter_state(shared.model).items()}
    priors = Priors.from_counts(rng.integers(1, 50, n), rng.integers(0, 20, (min(n, 5), n)))
    card = {"format": "fedinterest-model-card", "backbone": backbone, "num_labels": n,
            "task": task.config.to_dict(), "settings": {"max-length": 48}}
    return export_model(shared.model, state, taxonomy, card, out / "export", priors)


def synthetic_users(categories: list[str], n: int, seed: int = 0) -> list[dict]:
    """``n`` users of 20-50 events over the last three days: sticky category runs, mostly views."""
    rng = np.random.default_rng(seed)
    end = 1_757_000_000
    users = []
    for u in range(n):
        size = int(rng.integers(20, 51))
        times = np.sort(rng.integers(end - 3 * 86_400, end, size))
        category = rng.choice(categories)
        events = []
        for t in times.tolist():
            if rng.random() > 0.7:
                category = rng.choice(categories)
            action = str(rng.choice(["view", "fav", "cart", "buy"], p=[0.85, 0.05, 0.06, 0.04]))
            events.append({"timestamp": t, "category": str(category), "action": action,
                           "item_id": f"{category}-{int(rng.integers(20))}"})
        users.append({"user_id": f"u{u}", "events": events})
    return users


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "fedinterest", "serve", "--adapter", str(export), "--port", str(port),
               "--device", args.device, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--threads", str(args.threads), "--log-level", "warning"]
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode()


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 300.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            return json.loads(get(f"{url}/health", timeout=2))
        except OSError:  # not listening yet
            time.sleep(0.3)
    sys.exit(f"no /health after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def batch_totals(url: str) -> tuple[float, float]:
    """(users scored, batches) so far, from /metrics."""
    pattern = r"^(fedinterest_batch_size_\w+) (\S+)$"
    value = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, get(f"{url}/metrics"), re.MULTILINE)}
    return value["fedinterest_batch_size_sum"], value["fedinterest_batch_size_count"]


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: cheap enough not to be the bottleneck."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line, *headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = dict(h.split(":", 1) for h in headers if ":" in h)
        length = int(next(v for k, v in fields.items() if k.lower() == "content-length"))
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def run_level(url: str, users: list[dict], concurrency: int, requests: int) -> dict:
    """Fire ``requests`` one-user requests, ``concurrency`` in flight at a time; latencies in ms."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"users": [users[i % len(users)]]}).encode() for i in range(requests)]
    latencies: list[float] = []
    failures: list[str] = []

    async def worker(mine: list[bytes]) -> None:
        connection = Connection(host, int(port))
        try:
            for body in mine:
                started = time.perf_counter()
                status, reply = await connection.post("/predict", body)
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    failures.append(f"{status}: {reply[:200]!r}")
        finally:
            await connection.close()

    sum_before, count_before = batch_totals(url)
    started = time.perf_counter()
    await asyncio.gather(*(worker(bodies[k::concurrency]) for k in range(concurrency)))
    wall = time.perf_counter() - started
    sum_after, count_after = batch_totals(url)
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return {"concurrency": concurrency, "requests": len(latencies), "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)), "rps": len(latencies) / wall,
            "batch": (sum_after - sum_before) / max(count_after - count_before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", metavar="DIR", help="an export directory (default: build one)")
    parser.add_argument("--backbone", default="tiny", help="backbone of the built export (default tiny)")
    parser.add_argument("--device", default="auto", help="server device (default: cuda if available)")
    parser.add_argument("--concurrency", default="1,8,64", help="requests in flight per level (default 1,8,64)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (default 200)")
    parser.add_argument("--users", type=int, default=256, help="distinct synthetic users (default 256)")
    parser.add_argument("--threads", type=int, default=0, help="server model threads (default 0: torch's default)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        tmp_path = Path(tmp)
        export = Path(args.adapter) if args.adapter else build_export(tmp_path, args.backbone)
        if export.name == "adapter":
            export = export.parent
        categories = json.loads((export / "taxonomy.json").read_text())["categories"]
        users = synthetic_users(categories, args.users)
        port, log = free_port(), tmp_path / "server.log"
        url = f"http://127.0.0.1:{port}"
        server = start_server(export, port, args, log)
        try:
            health = wait_healthy(url, server, log)
            asyncio.run(run_level(url, users, 1, 8))  # warm-up: first calls allocate
            print(f"backbone {health['backbone']} on {health['device']}; adapter {health['adapter']}; "
                  f"{health['classes']} classes; max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms; "
                  f"{os.cpu_count()} CPUs, server threads {args.threads or 'default'}")
            print(f"{'concurrency':>11} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'mean batch':>10}")
            for level in (int(c) for c in args.concurrency.split(",")):
                r = asyncio.run(run_level(url, users, level, max(args.requests, level)))
                print(f"{r['concurrency']:>11} {r['requests']:>8} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                      f"{r['rps']:>8.1f} {r['batch']:>10.1f}", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
