"""The simulated federation the supported way: ``flwr run`` against a local SuperLink in simulation mode.

``run_federation_process`` writes the shops' node configs to ``sim_nodes.json`` (the run config's
``sim-nodes``: a simulated node gets only its partition id, ``simulated_node_config`` maps it to
its shop), starts ``flower-superlink --simulation`` on a free port with a FLWR_HOME of its own,
submits this app with ``flwr run --stream`` (the ServerApp's progress lines pass through), checks
the run's final status with ``flwr ls`` and rebuilds the server's result from the run's out-dir:
the last checkpoint (weights, history), ``task_spec.json`` and the export. The SuperLink, and
the SuperExec, simulation runtime and Ray workers below it, stop when it returns, fails or is
interrupted, and also when this process dies (they follow their parent down).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fedinterest.common.atomic import atomic_write_text
from fedinterest.common.config import ConfigError
from fedinterest.deploy import flower

from .runner import Prepared, SimulationOutcome

SIM_NODES = "sim_nodes.json"  # in the out-dir: partition id -> node config
PLATFORM_TASK = "platform_task.json"  # in the out-dir: the run's input task (task_spec.json is its choice)
CONNECTION = "simulation"
COMPLETED = "finished:completed"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
#: Node-config and run-config keys holding paths: made absolute, since Flower's processes run elsewhere.
NODE_PATHS = ("data-path", "state-dir", "roster")
RUN_PATHS = ("out-dir", "task-spec", "roster", "sim-data", "sim-nodes", "message-log")
#: Lines of Flower's and Ray's own logging that a user of `simulate` cannot act on.
NOISE = re.compile(
    r"^\s*(INFO|DEBUG)\s*:"  # Flower's INFO/DEBUG log lines
    r"|Since flwr 1\.32, default simulated SuperNodes"
    r"|flwr federation simulation-config|To change federation size"
    r"|Starting logstream for run_id|Successfully started run|Using SuperLink: |Successfully installed fedinterest"
    r"|Manually terminating ClientAppActor"  # Ray actors stopped at the end of the run
    r"|^\s*$"
)


class FederationFailed(RuntimeError):
    """The simulated federation did not complete; the message ends with the end of its log."""


def run_federation_process(
    prepared: Prepared,
    run_config: dict,
    *,
    cpus: int | None = None,
    cpus_per_shop: float = 1.0,
    gpus: int = 0,
    gpus_per_shop: float = 0.0,
    environment: dict[str, str] | None = None,
    progress: Callable[[str], None] = print,
    startup_timeout: float = 120.0,
) -> SimulationOutcome:
    """Run the federation with ``flwr run`` on a local simulation SuperLink; the server's result.

    ``cpus``: the Ray instance's CPUs (default: this machine's); ``cpus_per_shop``: each simulated
    shop's (whole CPUs); ``gpus``, ``gpus_per_shop``: GPUs for Ray and each shop's share of one (the
    shops' node configs say ``device=cuda``); ``environment``: variables for every process of the
    run (e.g. a shared frozen-prefix cache for many workers). ``progress`` gets every line the run
    prints, less Flower's own INFO noise.
    """
    from fedinterest.server.settings import DEFAULTS

    out_dir = Path(str(run_config["out-dir"])).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = federation_run_config(prepared, run_config, out_dir)
    federation = simulation_config(len(prepared.node_configs), cpus or os.cpu_count() or 2, cpus_per_shop,
                                   gpus, gpus_per_shop)
    logs = out_dir / "logs"
    work = out_dir / "flower"  # the app as flwr run builds it, and FLWR_HOME: this run's only
    shutil.rmtree(work, ignore_errors=True)
    try:
        app = flower.make_app(work / "app" / "fedinterest")
        run_config_file = work / "run_config.toml"
        _write_toml(run_config_file, config)
        with local_superlink(work / "flwr-home", logs / "superlink.log", startup_timeout, environment) as env:
            run_id = submit(app, run_config_file, federation, env, logs / "flwr-run.log", progress)
            status, details = run_status(run_id, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if status != COMPLETED:
        raise FederationFailed(f"the federation run {run_id} ended {status}{': ' + details if details else ''}\n"
                               f"{_log_tail(logs)}")
    rounds = int(config.get("num-server-rounds", DEFAULTS["num-server-rounds"]))
    return SimulationOutcome(result=load_result(Path(str(run_config["out-dir"])), rounds))


# ----------------------------------------------------------------------------- configuration


def federation_run_config(prepared: Prepared, run_config: dict, out_dir: Path) -> dict:
    """The run config ``flwr run`` passes: the task and the shops' node configs as files, paths absolute."""
    from fedinterest.server.settings import FederationSettings, save_task_spec

    task_spec = out_dir / PLATFORM_TASK
    save_task_spec(prepared.task, task_spec)
    nodes = {str(pid): _absolute(node, NODE_PATHS) for pid, node in prepared.node_configs.items()}
    atomic_write_text(out_dir / SIM_NODES, json.dumps(nodes, indent=1))
    # every simulated shop is local: wait for all of them, unless told otherwise
    defaults = {"min-shops": len(prepared.node_configs)}
    if prepared.roster is not None:
        defaults["roster"] = str(prepared.roster)
    config = _absolute({**defaults, **run_config, "out-dir": str(out_dir), "task-spec": str(task_spec),
                        "sim-nodes": str(out_dir / SIM_NODES)}, RUN_PATHS)
    FederationSettings.from_run_config(config)  # a bad key or value fails here, not in the ServerApp
    return config


def simulation_config(shops: int, cpus: int, cpus_per_shop: float, gpus: int = 0, gpus_per_shop: float = 0.0) -> dict:
    """``flwr run --federation-config``: one simulated SuperNode per shop, Ray sized like ``run_federation``'s.

    Ray runs as many shop workers at once as both resources allow: ``cpus / cpus_per_shop`` and,
    on GPUs, ``gpus / gpus_per_shop`` (``gpus_per_shop`` 0.125 puts eight workers on each GPU,
    each with one frozen backbone that its shops share, swapping only their adapters).
    """
    if float(cpus_per_shop) != int(cpus_per_shop) or cpus_per_shop < 1:
        raise ConfigError(f"--cpus-per-shop {cpus_per_shop:g}: Flower's simulation runtime gives each shop "
                          "whole CPUs (1, 2, ...)")
    if gpus and not 0 < gpus_per_shop <= 1:
        raise ConfigError(f"--gpus-per-shop {gpus_per_shop:g}: a shop worker takes a share of one GPU, in (0, 1]")
    config = {"num-supernodes": int(shops), "client-resources-num-cpus": int(cpus_per_shop),
              "client-resources-num-gpus": float(gpus_per_shop), "init-args-num-cpus": int(cpus),
              "init-args-logging-level": "error", "init-args-log-to-driver": True}
    return {**config, "init-args-num-gpus": int(gpus)} if gpus else config


#: A simulated shop worker's default share of a GPU: eight workers per GPU.
GPUS_PER_SHOP = 0.125


def simulation_devices(device: str, gpus_per_shop: float | None, visible_gpus: int) -> tuple[str, int, float]:
    """``(device of every shop, GPUs for Ray, each shop worker's share of one)`` for ``simulate --device``.

    Ray hands each worker its GPU as the only visible one, so shops say ``cuda``, never ``cuda:N``
    (``CUDA_VISIBLE_DEVICES`` chooses the GPUs a simulation may use).
    """
    kind = ("cuda" if visible_gpus else "cpu") if device in ("", "auto") else device
    if kind.startswith("cuda:"):
        raise ConfigError(f"--device {device}: simulate spreads the shops over the GPUs itself; use --device cuda "
                          "(and CUDA_VISIBLE_DEVICES to choose which GPUs)")
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: simulate runs shops on cpu or cuda")
    if kind == "cpu":
        if gpus_per_shop:
            raise ConfigError(f"--gpus-per-shop {gpus_per_shop:g} needs --device cuda")
        return "cpu", 0, 0.0
    if not visible_gpus:
        raise ConfigError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")
    return "cuda", int(visible_gpus), float(GPUS_PER_SHOP if gpus_per_shop is None else gpus_per_shop)


def _absolute(config: dict, keys: tuple[str, ...]) -> dict:
    return {k: str(Path(str(v)).resolve()) if k in keys and str(v) else v for k, v in config.items()}


def _write_toml(path: Path, values: dict) -> None:
    import tomli_w  # a Flower dependency

    path.write_text(tomli_w.dumps(values))


# ----------------------------------------------------------------------------- Flower's processes


@contextmanager
def local_superlink(flwr_home: Path, log: Path, timeout: float = 120.0,
                    environment: dict[str, str] | None = None) -> Iterator[dict]:
    """A ``flower-superlink --simulation`` on a free local port; yields the ``flwr`` CLI's environment.

    It runs in a session of its own and is stopped (with everything below it) on the way out, on
    SIGTERM too; should this process die first, the kernel sends it SIGTERM.
    """
    env = flower.environment(flwr_home, {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", **(environment or {})})
    # a Ray instance of its own: ray.init would join a cluster that `ray start` left on this machine
    # (and refuse the CPU count); RAY_TMPDIR is where it looks for one
    env.pop("RAY_ADDRESS", None)
    ray_tmp = None if env.get("RAY_TMPDIR") else tempfile.mkdtemp(prefix="ray-")
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _terminate_on_sigterm():
            superlink = _start_listening(env, log, timeout)
            try:
                yield env
            finally:
                below = _descendants(superlink.pid)  # the simulation runtime and Ray have sessions of their own
                flower.stop(superlink)
                _stop_all(below)
    finally:
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _start_listening(env: dict, log: Path, timeout: float, tries: int = 3) -> subprocess.Popen:
    """The SuperLink, listening on a free port that the ``flwr`` CLI's connection names.

    Another program may take the free port before the SuperLink binds it: then it tries another.
    """
    for attempt in range(1, tries + 1):
        address = f"127.0.0.1:{_free_port()}"
        _write_connection(Path(env["FLWR_HOME"]), address)
        log.unlink(missing_ok=True)
        command = [flower.binary("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
                   "--port", address.rsplit(":", 1)[1], "--disable-runtime-dependency-installation"]
        superlink = _start(command, env, log)
        try:
            flower.wait_listening(address, superlink, log, timeout)
            return superlink
        except BaseException as exc:
            flower.stop(superlink)
            if not isinstance(exc, ConfigError) or attempt == tries or "in use" not in flower.tail(log).lower():
                raise
    raise AssertionError("unreachable")


def submit(app: Path, run_config: Path, federation: dict, env: dict, log: Path,
           progress: Callable[[str], None]) -> int:
    """``flwr run --stream``: the run's id once its log has ended; its lines pass to ``progress``."""
    command = _dying_with_us([flower.binary("flwr"), "run", str(app), CONNECTION, "--run-config", str(run_config),
                              "--federation-config", flower.toml_pairs(federation), "--stream"])
    run_id = None
    with open(log, "w") as record, subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace") as process:
        for line in process.stdout:
            record.write(line)
            record.flush()
            found = RUN_STARTED.search(line)
            run_id = run_id or (int(found.group(1)) if found else None)
            text = ANSI.sub("", line).rstrip()
            if not NOISE.search(text):
                progress(text)
    sys.stdout.flush()  # the run's lines before any error of ours
    if run_id is None:
        raise FederationFailed(f"flwr run did not start the federation (exit {process.returncode})\n"
                               f"{_log_tail(log.parent)}")
    return run_id


def run_status(run_id: int, env: dict) -> tuple[str, str]:
    """The run's status (``finished:completed`` when it succeeded) and Flower's details on it."""
    listed = subprocess.run([flower.binary("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=120)
    try:
        run = json.loads(listed.stdout)["runs"][0]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"unknown (flwr ls: {listed.stdout}{listed.stderr})".strip(), ""
    return str(run.get("status")), str(run.get("status-details") or "")


def _write_connection(flwr_home: Path, address: str) -> None:
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{address}"', "insecure = true"]
    atomic_write_text(flwr_home / "config.toml", "\n".join(lines) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``flower.start`` (own session, logging to ``log``), and SIGTERM when this process dies."""
    with open(log, "ab") as handle:
        process = subprocess.Popen(_dying_with_us(command), stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    process.args = command  # named as itself in errors, not as the shim
    return process


#: Sets PR_SET_PDEATHSIG (SIGTERM once its parent dies; it survives exec), then execs the command.
_PDEATHSIG_SHIM = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); "
                   "os.getppid() == int(sys.argv[1]) or sys.exit(143); os.execv(sys.argv[2], sys.argv[2:])")


def _dying_with_us(command: list[str]) -> list[str]:
    """``command``, made to receive SIGTERM when this process dies, even by SIGKILL (Linux; elsewhere as is)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *command]


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here (as Ctrl-C does), so the SuperLink is stopped on the way out."""
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
    else:
        yield


def _descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``, with its start time (so a reused pid is never signalled)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, stack = {}, [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and (stat := _stat(child)):
                found[child] = stat[19]
                stack.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (state, ppid, ...), or None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def _stop_all(processes: dict[int, str], grace: float = 10.0) -> None:
    """SIGTERM what is left of ``processes``; SIGKILL what still is after ``grace`` seconds."""
    def left() -> list[int]:
        return [pid for pid, started in processes.items() if (stat := _stat(pid)) and stat[19] == started]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid in left():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)


def _log_tail(logs: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of the run's log (else the SuperLink's), named, without colour codes."""
    for log in (logs / "flwr-run.log", logs / "superlink.log"):
        text = [line for line in ANSI.sub("", flower.tail(log, 20000)).splitlines() if line.strip()]
        if text:
            return f"{log} ends:\n" + "\n".join(text[-lines:])
    return f"(no log in {logs})"


# ----------------------------------------------------------------------------- the result


def load_result(out_dir: Path, rounds: int):
    """The ``FederationResult`` the ServerApp left in ``out_dir``: last checkpoint, chosen task, export.

    ``export_dir`` names the export under ``out_dir`` as given (relative stays relative), as the
    in-process ``run_federation`` does.
    """
    import numpy as np

    from fedinterest.common.settings import TaskSpec
    from fedinterest.server.checkpoint import Checkpoint
    from fedinterest.server.federation import CHECKPOINTS, EXPORT, FederationResult
    from fedinterest.server.settings import load_task_spec

    checkpoint = Checkpoint.load(out_dir / CHECKPOINTS)
    if checkpoint.round != rounds:
        raise FederationFailed(f"{out_dir / CHECKPOINTS} holds round {checkpoint.round}, not the last round {rounds}")
    task = load_task_spec(out_dir / "task_spec.json")
    if not isinstance(task, TaskSpec):
        raise FederationFailed(f"{out_dir / 'task_spec.json'} holds no label space")
    export = out_dir / EXPORT
    if not export.is_dir():
        raise FederationFailed(f"the run completed but left no export in {export}")
    return FederationResult(len(checkpoint.history), checkpoint.weights.astype(np.float32), checkpoint.history,
                            str(export), task)
