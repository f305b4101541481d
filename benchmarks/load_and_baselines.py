"""Time and peak memory of `fedinterest baselines` on a generated 1,000,000-line Taobao file.

Goal (issue 2): under 60 s and under 2 GB on 2 cores. Usage:

    python benchmarks/load_and_baselines.py [--lines N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

EVENTS_PER_USER = 150  # about, for the default 42 days


def make_file(out: Path, lines: int) -> Path:
    """A single headerless Taobao UserBehavior file of exactly ``lines`` lines."""
    shops = out / "shops"
    users = int(lines / EVENTS_PER_USER * 1.1) + 10
    write_synthetic(shops, SynthConfig(shops=5, users=users, seed=7))
    target = out / "UserBehavior.csv"
    written = 0
    with open(target, "w") as dst:
        for part in sorted(shops.glob("shop_*.csv")):
            for line in open(part):
                if written == lines:
                    break
                dst.write(line)
                written += 1
    if written < lines:
        raise SystemExit(f"generated only {written} lines; raise EVENTS_PER_USER slack")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="write the file here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp)
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        path = make_file(out, args.lines)
        print(f"generated {args.lines:,} lines ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
        command = [sys.executable, "-m", "fedinterest", "baselines", "--data", str(path)]
        t = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        wall = time.perf_counter() - t
        if result.returncode:
            print(result.stdout, result.stderr)
            raise SystemExit(result.returncode)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(result.stdout)
        print(f"fedinterest baselines on {args.lines:,} lines: {wall:.1f} s wall, peak memory {peak_mb:,.0f} MB "
              f"(goal: < 60 s, < 2048 MB) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
