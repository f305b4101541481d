"""The federation deployed: real ``flower-superlink`` and ``flower-supernode`` processes.

No simulation engine: one SuperLink, three SuperNodes started the way a merchant starts one (its
shop's data, state directory and ε in ``--node-config``), and ``flwr run`` submitting this app to
the SuperLink over its (insecure, local) Control API. The ServerApp and every ClientApp run in
Flower's own subprocesses, installed from the FAB that ``flwr run`` builds; a ClientApp process
lives for one message only, so the SecAgg+ state between stages crosses process boundaries
through the node's Context, as it does in production.

Flower 1.42 serves the Fleet, Control and ServerAppIo (Runtime) APIs of the SuperLink on one HTTP
port (``--host``/``--port``); each SuperNode serves its ClientAppIo (Runtime) API on its own
``--port``. ``flwr run APP CONNECTION`` takes a named SuperLink connection from
``$FLWR_HOME/config.toml``; the test writes one there. It runs the app from a copy of its
packages and a ``pyproject.toml`` without ``[tool.flwr.federations]``: ``flwr run`` on a
directory whose pyproject still has that legacy section migrates it to the Flower config and
comments it out in place, which must not happen to the working tree.

Cost: about 4 minutes on 2 cores, nearly all of it Flower's process model rather than training.
Every message starts a fresh ``flwr-clientapp`` process (2 rounds x 5 stages x 3 shops = 30),
and each imports flwr, torch, transformers and peft again (about 5 CPU-s for a SecAgg+ stage,
10 for train and evaluate); the SuperNode polls the SuperLink every 3 s when idle and the
ServerApp's grid polls for replies every 3 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("common", "client", "server", "simulations")
SHOPS, ROUNDS, EPSILON, SEED = 3, 2, 8.0, 3
START_TIMEOUT = 90  # SuperLink up, SuperNodes registered
RUN_TIMEOUT = 600  # the whole run; about 4 minutes on 2 idle cores (see the module docstring)


def _binary(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def deployed(node: dict) -> dict:
    """A simulated shop's node config as a merchant passes it: no seed (refused off the simulation engine)."""
    return {k: v for k, v in node.items() if k != "seed"}


def toml_pairs(values: dict) -> str:
    """``key=value`` pairs as Flower's --node-config / --run-config parse them (TOML values)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            assert "'" not in value and " " not in value, value
            text = f"'{value}'"
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def make_app(directory: Path) -> Path:
    """A copy of the Flower app: its packages and pyproject, less the legacy federations section."""
    directory.mkdir(parents=True)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, directory / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "README.md", directory / "README.md")
    import tomli_w  # a Flower dependency

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    config["tool"]["flwr"].pop("federations", None)
    (directory / "pyproject.toml").write_text(tomli_w.dumps(config))
    return directory


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_")}
    home.mkdir(parents=True, exist_ok=True)
    python_path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(python_path),
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name
        "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",  # start each ClientApp/ServerApp process sooner (default 1 s)
    })
    env.pop("FEDINTEREST_AUDIT_DIR", None)
    return env


# ----------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pids) -> set[int]:
    """Every live process below ``pids`` (Flower starts some in sessions of their own)."""
    children, found, stack = _children_map(), set(), list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Processes:
    """The processes this test starts, each in its own session, logs to files; stopped together."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        try:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=cwd, start_new_session=True)
        finally:
            log.close()
        self.started[name] = process
        return process

    def log(self, name: str, tail: int = 4000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def report(self, tail: int = 3000) -> str:
        return "\n".join(f"----- {name} (exit {p.poll()}) -----\n{self.log(name, tail)}"
                         for name, p in self.started.items())

    def check_running(self, *names: str) -> None:
        for name in names:
            process = self.started[name]
            assert process.poll() is None, f"{name} exited with {process.returncode}\n{self.report()}"

    def stop(self, grace: float = 10.0) -> set[int]:
        """SIGTERM everything started and below it, then SIGKILL what is left; return survivors."""
        roots = [p.pid for p in self.started.values()]
        extra = descendants(roots)
        for process in self.started.values():
            if process.poll() is None:
                _signal(process.pid, signal.SIGTERM, group=True)
        for pid in extra:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and (any(p.poll() is None for p in self.started.values())
                                          or any(alive(pid) for pid in extra)):
            time.sleep(0.1)
        extra |= descendants(roots + list(extra))
        for process in self.started.values():
            _signal(process.pid, signal.SIGKILL, group=True)
        for pid in extra:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        for process in self.started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.2)
        return {pid for pid in extra | set(roots) if alive(pid)}


# ----------------------------------------------------------------------------- the test


def test_deployed_federation_with_superlink_supernodes_and_flwr_run(tmp_path):
    from safetensors.numpy import load_file

    from client.ledger import PrivacyLedger
    from common.model.backbone import resolve_backbone
    from server.export import ADAPTER, MODEL_CARD, read_model_card
    from server.settings import save_task_spec
    from simulations.runner import prepare
    from simulations.synthetic import SynthConfig

    if not Path(_binary("flower-superlink")).exists():
        pytest.skip("flower-superlink is not installed")

    prepared = prepare(tmp_path / "shops", shops=SHOPS, synth=SynthConfig(shops=SHOPS, users=180, days=20, seed=5),
                       max_train_examples=60, epsilon=EPSILON, seed=SEED)
    assert len(prepared.node_configs) == SHOPS
    spec_path = tmp_path / "task_spec.json"
    save_task_spec(prepared.task, spec_path)
    resolve_backbone("tiny")  # built once here, into the shared FEDINTEREST_CACHE, not by four processes at once
    app = make_app(tmp_path / "app" / "fedinterest")
    out = tmp_path / "run"

    link_port, *node_ports = free_ports(1 + SHOPS)
    homes = tmp_path / "flwr"
    cli_env = environment(homes / "cli")
    (homes / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "deployment"\n\n'
        f'[superlink.deployment]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    run_config = {
        "num-server-rounds": ROUNDS, "backbone": "tiny", "task-spec": str(spec_path), "out-dir": str(out),
        "min-shops": SHOPS, "seed": SEED, "batch-size": 16, "physical-batch-size": 16, "max-steps": 3,
        "max-length": 40, "eval-examples": 40, "lr": 0.02, "round-timeout": 180.0,
    }

    processes = Processes(tmp_path / "logs")
    survivors: set[int] = set()
    started = time.time()
    try:
        processes.start("superlink", [_binary("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                      "--port", str(link_port)], environment(homes / "superlink"))
        for pid, port in zip(sorted(prepared.node_configs), node_ports):
            processes.start(f"supernode-{pid}", [
                _binary("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                "--host", "127.0.0.1", "--port", str(port),
                "--node-config", toml_pairs(deployed(prepared.node_configs[pid])),
            ], environment(homes / f"supernode-{pid}"))
        deadline = time.time() + START_TIMEOUT
        while not listening(link_port):
            processes.check_running("superlink")
            assert time.time() < deadline, f"the SuperLink did not listen on {link_port}\n{processes.report()}"
            time.sleep(0.2)

        submit = processes.start("flwr-run", [
            _binary("flwr"), "run", str(app), "deployment", "--run-config", toml_pairs(run_config), "--stream",
        ], cli_env, cwd=tmp_path)
        card_path = out / "export" / MODEL_CARD
        deadline = time.time() + RUN_TIMEOUT
        while submit.poll() is None:  # `--stream` returns once the run has finished
            processes.check_running("superlink", *(f"supernode-{pid}" for pid in prepared.node_configs))
            assert time.time() < deadline, f"the run did not finish in {RUN_TIMEOUT} s\n{processes.report()}"
            time.sleep(0.5)
        assert submit.returncode == 0, processes.report()
        assert "Successfully started run" in processes.log("flwr-run", 10**6), processes.report()

        listed = subprocess.run([_binary("flwr"), "ls", "deployment", "--format", "json"], env=cli_env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        runs = json.loads(listed.stdout)["runs"]
        assert [r["status"] for r in runs] == ["finished:completed"], (runs, processes.report())
        seconds = time.time() - started
    finally:
        survivors = processes.stop()
    assert not survivors, f"processes left running: {sorted(survivors)}"
    print(f"deployed federation: {seconds:.0f} s from SuperLink start to a finished run")

    # the ServerApp's export: a peft adapter, its taxonomy and a model card of both rounds
    assert card_path.is_file(), processes.report()
    card = read_model_card(out / "export")
    assert card["rounds"] == ROUNDS and [h["round"] for h in card["history"]] == list(range(1, ROUNDS + 1))
    for entry in card["history"]:
        assert entry["contributors"] == SHOPS and entry["aborted"] is None and not entry["dropped"], entry
    # evaluated once, after the last round (eval-every 0): a secure sum of every shop's noised counts
    assert [bool(h["eval"]) for h in card["history"]] == [False] * (ROUNDS - 1) + [True]
    assert card["history"][-1]["eval"]["shops"] == SHOPS and 0 <= card["final_metrics"]["hr@5"] <= 1
    assert card["label_space"] == "dp-top-k"  # chosen by the shops' noised, securely summed engagement
    terms = card["privacy"]["per_shop"]
    assert len(terms) == SHOPS and all(
        t["unit"] == "user" and t["accountant"] == "prv" and t["delta_at_most"] <= 1e-2 for t in terms.values())
    assert len(card["epsilon_per_shop"]) == SHOPS
    assert all(0 < eps <= EPSILON for eps in card["epsilon_per_shop"].values()), card["epsilon_per_shop"]
    adapter_dir = out / "export" / ADAPTER
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert weights and all(np.isfinite(v).all() for v in weights.values())
    assert any(np.abs(v).sum() > 0 for k, v in weights.items() if "lora_B" in k)  # trained, not the init
    assert (out / "checkpoint" / "checkpoint.json").is_file()

    # every shop's own ledger, on the shop's side: both rounds recorded, within its budget
    for pid, node in prepared.node_configs.items():
        ledger = PrivacyLedger.open(node["state-dir"])
        assert [r.server_round for r in ledger.rounds] == list(range(1, ROUNDS + 1)), (pid, ledger.rounds)
        # labels, priors, the rounds, the final evaluation
        assert [r.kind for r in ledger.releases] == ["statistics"] * 2 + ["dp-sgd"] * ROUNDS + ["statistics"]
        assert ledger.releases[-1].input_sha256.startswith("evaluation")
        assert all(r.budget == EPSILON for r in ledger.rounds)
        assert 0 < ledger.rounds[-1].epsilon < ledger.spent <= EPSILON, (pid, ledger.spent)
