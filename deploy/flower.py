"""Flower's own programs, as the platform and merchant commands run them.

Flower 1.42 serves the SuperLink's Fleet, Control and ServerAppIo APIs on one HTTPS port; the
``flwr`` CLI reaches it through a named connection in ``$FLWR_HOME/config.toml``; ``flwr run``
builds a FAB from an app directory (its packages and a ``pyproject.toml`` with
``[tool.flwr.app]``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

from fedinterest.common.atomic import atomic_write_text
from fedinterest.common.config import ConfigError

#: The packages a FAB of this app holds.
#: (``fedinterest`` is the namespace package that maps the others under its name.)
APP_PACKAGES = ("fedinterest", "common", "client", "server", "simulations")
CONNECTION = "platform"


def binary(name: str) -> str:
    """A Flower program installed beside this Python (the venv), else on PATH."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} is not installed; install fedinterest with its dependencies (make setup)")
    return found


def environment(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower process: its own FLWR_HOME, no telemetry, no runtime installs."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_")}
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": env.get("FLWR_TELEMETRY_ENABLED", "0"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    })
    env.update(extra or {})
    return env


def toml_pairs(values: Mapping[str, object]) -> str:
    """``key=value`` pairs as Flower's --node-config and --run-config parse them (TOML values)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            if "'" in value or " " in value:
                raise ConfigError(f"{key}={value!r}: Flower's config strings cannot hold spaces or quotes; "
                                  "use a path without them")
            text = f"'{value}'"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            raise ConfigError(f"{key}: {type(value).__name__} values cannot travel in a Flower config")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def write_connection(flwr_home: Path, address: str, ca: Path | None) -> None:
    """The ``flwr`` CLI's connection to the SuperLink: TLS against ``ca``, or insecure without one."""
    lines = ['[superlink]', f'default = "{CONNECTION}"', '', f'[superlink.{CONNECTION}]', f'address = "{address}"']
    lines.append(f'root-certificates = "{ca.resolve()}"' if ca is not None else "insecure = true")
    atomic_write_text(flwr_home / "config.toml", "\n".join(lines) + "\n")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def wait_listening(address: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Return once ``address`` accepts TCP connections; raise with the log's end if ``process`` exits first."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ConfigError(f"{Path(process.args[0]).name} exited with {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(f"nothing listens on {address} after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.2)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


#: The components of a deployment's app: the platform's ServerApp and the merchant's ClientApp
#: (pyproject.toml names the simulation pair that ``flwr run .`` runs).
DEPLOYED = {"serverapp": "fedinterest.server.app:app", "clientapp": "fedinterest.client.app:app"}


def make_app(directory: Path, components: Mapping[str, str] | None = None) -> Path:
    """This app as ``flwr run`` takes it: its packages and a pyproject with ``[tool.flwr.app]`` only.

    Built afresh from the source tree of the installed packages, so ``flwr run`` never touches the
    checkout. ``components``: the ServerApp and ClientApp (default: pyproject's, the simulation's).
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    import tomli_w  # a Flower dependency

    import fedinterest

    source = Path(fedinterest.__file__).resolve().parents[1]
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(f"{pyproject} is missing: the platform's run and a node's pinned app are built from a "
                          "source checkout of fedinterest (pip install -e .)")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for package in APP_PACKAGES:
        shutil.copytree(source / package, directory / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(source / "README.md", directory / "README.md")
    config = tomllib.loads(pyproject.read_text())
    config = {"build-system": config["build-system"], "project": config["project"],
              "tool": {"flwr": config["tool"]["flwr"]}}
    if components:
        config["tool"]["flwr"]["app"]["components"] = dict(components)
    (directory / "pyproject.toml").write_text(tomli_w.dumps(config))
    return directory


def start(command: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A Flower program in a session of its own (so it and its children stop together), logging to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), cwd=cwd, start_new_session=True)


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process's session, then SIGKILL what is left after ``grace`` seconds."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def parse_pairs(text: str | None, what: str) -> dict:
    """``"key=value key=value"`` (TOML values) as Flower parses ``--run-config`` and ``--node-config``."""
    if not text:
        return {}
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text]))
    except Exception as err:  # Flower raises ValueError or TOML errors
        raise ConfigError(f"{what}: {text!r} is not key=value pairs with TOML values ({err})") from None
