"""Wall time, shops per minute and peak memory of simulating 10, 50 and 100 shops x 2 rounds.

Runs ``fedinterest simulate`` (real Flower simulation engine, DP, SecAgg+) in a subprocess and
samples the resident memory of its whole process tree (driver, Ray, workers) every 0.25 s.
Workers share one frozen backbone per process (``client.shop.SharedModel``), so memory should
grow with the shops' data, not with one model per shop. On a GPU (``--device cuda``) the shop
workers share it, ``--gpus-per-shop`` of it each. Usage:

    python benchmarks/sim_scale.py [--shops 10 50 100] [--rounds 2] [--backbone tiny]
        [--device cuda [--gpus-per-shop 0.125] [--bf16] [--dp-engine fast]]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from fedinterest.client.privacy import DP_ENGINES


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(shops: int, rounds: int, out: Path, extra: list[str]) -> tuple[float, float, str]:
    command = [sys.executable, "-m", "fedinterest", "simulate", "--shops", str(shops),
               "--rounds", str(rounds), "--max-train-per-user", "2", "--max-steps", "2", "--batch-size", "8",
               "--max-length", "32", "--eval-per-user", "1", "--central-test", "200", "--reference-rounds", "0",
               "--out", str(out), *extra]
    env = {**os.environ, "FLWR_HOME": str(out / "flwr-home")}
    start, peak = time.perf_counter(), 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.25)
    output = process.stdout.read()
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{shops} shops failed:\n{output[-3000:]}")
    last = [line for line in output.splitlines() if line.startswith("[round")][-1:]
    return wall, peak / 2**20, last[0] if last else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shops", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--gpus-per-shop", type=float, help="each shop worker's share of a GPU (simulate's default)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--dp-engine", default=DP_ENGINES[0], choices=DP_ENGINES)
    args = parser.parse_args()
    extra = ["--backbone", args.backbone, "--device", args.device, "--dp-engine", args.dp_engine]
    if args.device == "cpu":
        extra += ["--cpus-per-shop", "1"]
    if args.gpus_per_shop:
        extra += ["--gpus-per-shop", str(args.gpus_per_shop)]
    if args.bf16:
        extra.append("--bf16")
    print(f"{os.cpu_count()} cores; {args.backbone} backbone on {args.device}, {args.rounds} rounds, "
          f"DP ε=8 ({args.dp_engine}) and SecAgg+ on every shop")
    print(f"{'shops':>6} {'wall s':>8} {'shop-rounds/min':>15} {'peak MB':>9}  last round")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.shops:
            wall, peak, last = run(n, args.rounds, Path(tmp) / f"s{n}", extra)
            print(f"{n:>6} {wall:>8.1f} {n * args.rounds / wall * 60:>15.1f} {peak:>9.0f}  {last[:80]}", flush=True)


if __name__ == "__main__":
    main()
