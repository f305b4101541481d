"""`flwr run .` on a fresh copy of the app, as a new user runs it: no data prepared, Flower's defaults.

Flower's default local SuperLink simulates 2 SuperNodes: the ServerApp writes the synthetic shops
on first use and ends with one line saying how to run enough SuperNodes (no traceback). With that
advice followed, the same app completes a round (marked slow: ``make test-slow``). No file of the
app is changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fedinterest.common.model.prefix import CACHE_ENV
from tests.test_simulate_flwr_run import kill_processes_with

pytestmark = pytest.mark.long(minutes=1)  # of real processes, on 2 cores: scheduled first (conftest)

ROOT = Path(__file__).resolve().parents[1]
APP = ("fedinterest", "common", "client", "server", "deploy", "simulations", "pyproject.toml", "README.md")
SMALL = ("num-server-rounds=1 backbone='tiny' max-steps=2 batch-size=16 physical-batch-size=16 max-length=32 "
         "eval-per-user=1 lr=0.02 seed=5")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fresh_copy(directory: Path) -> Path:
    for name in APP:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, directory / name)
    return directory


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            and p.relative_to(directory).parts[0] not in ("data", "runs")}


def flwr_run(app: Path, env: dict, *extra: str) -> str:
    done = subprocess.run(["flwr", "run", ".", "--stream", "--run-config", SMALL, *extra], cwd=app, env=env,
                          capture_output=True, text=True, timeout=900)
    return ANSI.sub("", done.stdout + done.stderr)


@contextmanager
def fresh_app(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """A fresh copy of the app and the environment of a new user's shell; Flower's local SuperLink (which
    stays up by design) and everything below it are stopped afterwards; no file of the app changed."""
    app = fresh_copy(tmp_path / "app")
    before = digests(app)
    marker = f"fedinterest-test-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(FEDINTEREST_TEST_MARKER=marker, FLWR_HOME=str(tmp_path / "flwr-home"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FEDINTEREST_HOME=str(tmp_path / "home"))
    env[CACHE_ENV] = str(tmp_path / "encodings")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # an activated environment
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-")  # Ray of its own, not a cluster another test started
    try:
        yield app, env
    finally:
        kill_processes_with(marker)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert digests(app) == before  # flwr run changed no file of the app (data/ and runs/ are its output)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_flwr_run_on_a_fresh_copy_makes_its_shops_and_says_in_one_line_what_to_run(tmp_path):
    with fresh_app(tmp_path) as (app, env):
        first = flwr_run(app, env)
    said = [line for line in first.splitlines() if "fedinterest:" in line]
    assert "Traceback" not in first, first[-4000:]
    assert (app / "data" / "synthetic" / "dataset.json").is_file(), first[-4000:]
    assert len([line for line in said if "ERROR" in line]) == 1, first[-4000:]
    assert "runs 2 SuperNodes" in said[-1] and '--federation-config "num-supernodes=5' in said[-1], said


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_flwr_run_on_a_fresh_copy_with_enough_supernodes_completes_a_round(tmp_path):
    with fresh_app(tmp_path) as (app, env):
        run = flwr_run(app, env, "--federation-config", "num-supernodes=3 client-resources-num-cpus=1")
    assert "Traceback" not in run, run[-4000:]
    assert "first use: wrote 5 synthetic shops" in run and "[round 1]" in run, run[-4000:]
    assert "exported the global adapter" in run, run[-4000:]
    assert (app / "runs" / "federation" / "export" / "adapter" / "adapter_model.safetensors").is_file()
