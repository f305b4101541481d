"""The platform's side of a deployment: one directory that holds the federation.

``init`` makes it (a CA and the SuperLink's certificate, the task, the run's settings, an empty
roster); the CA's private key signs the server certificate and is then discarded, or written
only outside the directory (``ca_key_out``), so nothing that runs here (the ServerApp included)
can read it. ``add_shop`` registers a merchant's two public keys (``shops/NAME.json``) and
rewrites the published ``roster.json``; ``start`` runs ``flower-superlink`` with TLS and
SuperNode authentication on loopback (its Control and runtime APIs never face the network) and
the Fleet API proxy (``deploy.fleet_proxy``) on the public address, registers the shops'
SuperNode keys through the loopback Control API, and submits the run with ``flwr run``. A
``start`` after a crash resumes the run from its last checkpoint.

The directory is 0700 and ``server.key`` 0600 (tightened on every start).

Layout of the directory::

    platform.json       address, TLS, run config            roster.json   published to merchants
    ca.pem              the federation's CA certificate (its key is not here)
    server.pem server.key                                    task_spec.json  the task the shops learn
    shops/NAME.json     each merchant's public keys          shops/NAME.pub  its SuperNode key
    registered.json     which shops the SuperLink's database knows
    superlink.db        the SuperLink's state                flwr/           FLWR_HOME of the CLI
    run/                the ServerApp's out-dir: checkpoint/, export/      logs/  every process's log
    messages/           with ``init --message-log``: every reply the platform received (for audit)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from fedinterest.common.atomic import atomic_write_json, atomic_write_text, file_lock
from fedinterest.common.config import ConfigError
from fedinterest.common.secagg.identity import ROSTER_FORMAT, Roster

from . import flower, tls
from .keys import ShopKeys
from .private import private_directory, tighten

PLATFORM_FORMAT = "fedinterest-platform/1"
SHOP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
INSECURE_WARNING = ("WARNING: --insecure: the SuperLink runs WITHOUT TLS and without SuperNode authentication. "
                    "Anyone on the network can read the traffic and join as a shop. Use it on a closed test "
                    "network only.")
#: Names the loopback SuperLink is reached by (the ServerApp, the proxy, the flwr CLI): always in the certificate.
LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", LOOPBACK_HOST)


class PlatformDir:
    """The files of a platform directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = r = Path(root).resolve()
        self.settings_file, self.roster, self.task_spec = r / "platform.json", r / "roster.json", r / "task_spec.json"
        self.ca, self.cert, self.key = r / "ca.pem", r / "server.pem", r / "server.key"
        self.stray_ca_key = r / "ca.key"  # where an older init left the CA's key: refused on start
        self.shops, self.registered, self.database = r / "shops", r / "registered.json", r / "superlink.db"
        self.flwr_home, self.out_dir, self.logs, self.app = r / "flwr", r / "run", r / "logs", r / "app" / "fedinterest"
        self.lock, self.messages = r / ".lock", r / "messages"

    def settings(self) -> dict:
        try:
            data = json.loads(self.settings_file.read_text())
        except OSError:
            raise ConfigError(f"{self.root} is not a platform directory (no platform.json); "
                              "make one with `fedinterest platform init`") from None
        if data.get("format") != PLATFORM_FORMAT:
            raise ConfigError(f"{self.settings_file}: not a {PLATFORM_FORMAT} file")
        return data

    def shop_keys(self) -> dict[str, ShopKeys]:
        return {path.stem: ShopKeys.read(str(path)) for path in sorted(self.shops.glob("*.json"))}


def init_platform(root: Path, *, address: str, hosts: Sequence[str] = (), task_spec: Path | None = None,
                  catalogue: Path | None = None, calendar: tuple[int | None, int | None] = (None, None),
                  run_config: dict | None = None, insecure: bool = False, message_log: bool = False,
                  ca_key_out: Path | None = None) -> PlatformDir:
    """Make a platform directory; refuses to touch an existing one.

    The CA's private key signs the server certificate and is discarded, unless ``ca_key_out``
    names where to keep it: a path outside the platform directory (refused inside it).
    """
    from fedinterest.server.settings import DEFAULTS, load_task_spec, save_task_spec

    platform = PlatformDir(root)
    if platform.settings_file.exists():
        raise ConfigError(f"{platform.settings_file} exists: {root} is already a platform directory")
    host, _ = flower.split_address(address)
    if ca_key_out is not None:
        _check_ca_key_out(platform, Path(ca_key_out), insecure)
    run_config = dict(run_config or {})
    unknown = set(run_config) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"--run-config: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if (task_spec is None) == (catalogue is None):
        raise ConfigError("give the task as --task-spec FILE, or --catalogue PATH (the platform's catalogue as "
                          "events data: the shops then choose the label space privately)")
    spec = load_task_spec(task_spec) if task_spec is not None else _pending_task(catalogue, calendar, run_config)
    private_directory(platform.root)
    save_task_spec(spec, platform.task_spec)
    if not insecure:
        ca_key, ca_cert = tls.make_ca(root.resolve().name)
        tls.write_certificate(platform.ca, ca_cert)
        server_key, server_cert = tls.make_server_certificate(ca_key, ca_cert, server_hosts(host, hosts))
        tls.write_private_key(platform.key, server_key)
        tls.write_certificate(platform.cert, server_cert)
        if ca_key_out is not None:
            tls.write_private_key(Path(ca_key_out), ca_key)
        del ca_key  # not kept anywhere else: a new server certificate needs a new CA (or the key kept offline)
    platform.shops.mkdir(exist_ok=True)
    atomic_write_text(platform.roster, json.dumps({"format": ROSTER_FORMAT, "shops": {}}, indent=1) + "\n")
    run_config = {**run_config, "task-spec": str(platform.task_spec), "out-dir": str(platform.out_dir),
                  "roster": str(platform.roster)}
    if message_log:
        run_config["message-log"] = str(platform.messages)
    atomic_write_json(platform.settings_file, {"format": PLATFORM_FORMAT, "address": address,
                                               "insecure": bool(insecure), "run_config": run_config})
    return platform


def _pending_task(catalogue: Path, calendar: tuple[int | None, int | None], run_config: dict):
    """The task the shops choose a label space for: the platform's category list and its calendar.

    Public inputs only: a category list (or a dataset's manifest naming one), never an events log,
    and split dates from ``--start``/``--end`` (or the manifest's window), never the data's span.
    """
    from fedinterest.common.config import ConfigError, TaskConfig
    from fedinterest.common.settings import PendingTask
    from fedinterest.common.task import Catalogue, temporal_split

    categories, window = Catalogue.published(catalogue)
    start, end = calendar
    if start is not None or end is not None:
        if start is None or end is None:
            raise ConfigError("--start and --end: give both (the platform's calendar)")
        window = (int(start), int(end))
    if window is None:
        raise ConfigError(f"{catalogue}: no calendar; give the run's period with --start and --end (the split's "
                          "dates are the platform's, never read off customers' events)")
    config = TaskConfig(top_k=int(run_config.get("top-k", 0)))
    return PendingTask(categories, temporal_split(window[0], window[1] - 1, config, str(catalogue)), config)


def server_hosts(host: str, hosts: Sequence[str] = ()) -> list[str]:
    """The names the server certificate covers: ``hosts`` (default: the address's host, or every local name
    for a local or wildcard address), and always the loopback names the platform's own processes use."""
    local = ["localhost", "127.0.0.1", "::1"]
    names = list(hosts) or (local if host in local or host in ("0.0.0.0", "::") else [host])
    return names + [name for name in LOOPBACK_NAMES if name not in names]


def _check_ca_key_out(platform: PlatformDir, path: Path, insecure: bool) -> None:
    if insecure:
        raise ConfigError("--ca-key-out: an --insecure platform has no CA")
    target = path.expanduser().resolve()
    if target == platform.root or platform.root in target.parents:
        raise ConfigError(f"--ca-key-out {path}: inside the platform directory {platform.root}, where the running "
                          "ServerApp could read it; name a path outside it (better: on offline storage)")
    if target.exists():
        raise ConfigError(f"--ca-key-out {path} exists; refusing to overwrite a key")


def add_shop(root: Path, name: str, keys: ShopKeys) -> Roster:
    """Register a merchant's keys and republish the roster; the SuperLink learns them at ``start``."""
    platform = PlatformDir(root)
    platform.settings()
    if not SHOP_NAME.match(name):
        raise ConfigError(f"shop name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    with file_lock(platform.lock):
        known = platform.shop_keys()
        if name in known:
            raise ConfigError(f"shop {name!r} is already on the roster; remove {platform.shops / (name + '.json')} "
                              "first to replace its keys")
        for other, their in known.items():
            if their.identity == keys.identity or their.supernode == keys.supernode:
                raise ConfigError(f"these keys are already registered as shop {other!r}")
        atomic_write_text(platform.shops / f"{name}.pub", keys.supernode + "\n")
        atomic_write_text(platform.shops / f"{name}.json", keys.to_json() + "\n")
        roster = Roster({**{n: k.identity for n, k in known.items()}, name: keys.identity})
        roster.save(platform.roster)
    return roster


def start_platform(root: Path, *, run_config: dict | None = None, keep_running: bool = False,
                   echo: Callable[[str], None] = print) -> int:
    """Run the SuperLink (loopback) and the Fleet proxy (public), register the shops, run the federation;
    the exit status of ``flwr run``."""
    platform = PlatformDir(root)
    settings = platform.settings()
    address, insecure = settings["address"], bool(settings["insecure"])
    tighten(platform.root, [platform.key])
    if platform.stray_ca_key.exists():
        raise ConfigError(f"{platform.stray_ca_key}: the CA's private key is in the platform directory, where the "
                          "running ServerApp can read it. Move it to offline storage (it is needed only to issue a "
                          "new server certificate) and start again")
    config = {**settings["run_config"], **(run_config or {})}
    roster = Roster.load(platform.roster)
    if len(roster) < int(config.get("min-shops", 3)):
        raise ConfigError(f"{platform.roster} lists {len(roster)} shop(s); the run needs min-shops="
                          f"{config.get('min-shops', 3)}: add shops with `fedinterest platform add-shop`")
    if insecure:
        echo(INSECURE_WARNING)
    else:
        _check_loopback_certificate(platform)
    from fedinterest.server.checkpoint import has_checkpoint
    from fedinterest.server.export import MODEL_CARD

    if (platform.out_dir / "export" / MODEL_CARD).is_file():
        raise ConfigError(f"the run in {platform.out_dir} has finished (its export is there); move it away to "
                          "start another")
    if has_checkpoint(platform.out_dir / "checkpoint"):
        config["resume"] = True
        echo(f"resuming the run from its checkpoint in {platform.out_dir / 'checkpoint'}")
    fresh_database = not platform.database.exists()
    internal = f"{LOOPBACK_HOST}:{_free_loopback_port()}"
    flower.write_connection(platform.flwr_home, internal, None if insecure else platform.ca)
    env = flower.environment(platform.flwr_home)
    tls_args = ["--insecure"] if insecure else [
        "--ssl-certfile", str(platform.cert), "--ssl-keyfile", str(platform.key),
        "--ssl-ca-certfile", str(platform.ca), "--enable-supernode-auth"]
    superlink_log, proxy_log = platform.logs / "superlink.log", platform.logs / "fleet-proxy.log"
    _, internal_port = flower.split_address(internal)
    superlink = flower.start([flower.binary("flower-superlink"), *tls_args, "--database", str(platform.database),
                              "--host", LOOPBACK_HOST, "--port", str(internal_port),
                              "--disable-runtime-dependency-installation"], env, superlink_log)
    started = [superlink]
    stopping = _stop_on_signals(started)
    try:
        flower.wait_listening(internal, superlink, superlink_log)
        proxy = flower.start(proxy_command(platform, address, internal, insecure), env, proxy_log)
        started.append(proxy)
        flower.wait_listening(address, proxy, proxy_log)
        echo(f"SuperLink listening on {internal} (loopback only: Control and runtime APIs; log: {superlink_log})")
        echo(f"Fleet API proxy listening on {address} for the merchants' SuperNodes "
             f"({'INSECURE' if insecure else 'TLS, SuperNode authentication'}; log: {proxy_log})")
        if not insecure:
            _register_shops(platform, env, fresh_database, echo)
        app = flower.make_app(platform.app, flower.DEPLOYED)
        echo(f"submitting the run: {config.get('num-server-rounds')} rounds, roster {roster.fingerprint()[:16]}…")
        status = _run(platform, app, config, env, echo)
        if status != "finished:completed":
            echo(f"the run ended {status}; its log is above. Fix the cause and `platform start` again: "
                 "it resumes from the last checkpoint")
            return 1
        echo(f"the run finished; the adapter is in {platform.out_dir / 'export'}")
        if keep_running:
            echo("the SuperLink keeps running (Ctrl-C to stop)")
            superlink.wait()
        return 0
    finally:
        stopping()
        for process in reversed(started):
            flower.stop(process)


def proxy_command(platform: PlatformDir, address: str, internal: str, insecure: bool) -> list[str]:
    """The Fleet API proxy on the public ``address``, forwarding to the SuperLink at ``internal``."""
    import os

    tls_args = [] if insecure else ["--certfile", str(platform.cert), "--keyfile", str(platform.key),
                                    "--ca", str(platform.ca)]
    return [sys.executable, "-m", "fedinterest.deploy.fleet_proxy", "--listen", address, "--upstream", internal, *tls_args,
            "--parent-pid", str(os.getpid())]


def _check_loopback_certificate(platform: PlatformDir) -> None:
    hosts = tls.certificate_hosts(platform.cert)
    if LOOPBACK_HOST not in hosts:
        raise ConfigError(f"{platform.cert} is valid for {hosts} but not for {LOOPBACK_HOST}, where the SuperLink "
                          "listens for the platform's own processes; issue it again with 127.0.0.1 and localhost "
                          "among its names")


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK_HOST, 0))
        return s.getsockname()[1]


def _run(platform: PlatformDir, app: Path, config: dict, env: dict, echo: Callable[[str], None]) -> str:
    """Submit the run with ``flwr run --stream`` (its log passes through) and return its final status."""
    command = [flower.binary("flwr"), "run", str(app), flower.CONNECTION, "--run-config", flower.toml_pairs(config),
               "--stream"]
    run_id = None
    with subprocess.Popen(command, env=env, cwd=platform.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as process:
        for line in process.stdout:
            echo(line.rstrip("\n"))
            found = RUN_STARTED.search(line)
            run_id = run_id or (int(found.group(1)) if found else None)
    if run_id is None:
        return f"unsubmitted (flwr run exited with {process.returncode})"
    listed = subprocess.run([flower.binary("flwr"), "ls", flower.CONNECTION, "--run-id", str(run_id), "--format",
                             "json"], env=env, cwd=platform.root, capture_output=True, text=True, timeout=120)
    try:
        return str(json.loads(listed.stdout)["runs"][0]["status"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"unknown (flwr ls: {listed.stdout}{listed.stderr})"


def _register_shops(platform: PlatformDir, env: dict, fresh_database: bool, echo: Callable[[str], None]) -> None:
    """``flwr supernode register`` every shop's SuperNode key the SuperLink's database does not hold yet."""
    registered = {} if fresh_database or not platform.registered.exists() else json.loads(platform.registered.read_text())
    for name, keys in platform.shop_keys().items():
        if registered.get(name, {}).get("supernode") == keys.supernode:
            continue
        result = subprocess.run([flower.binary("flwr"), "supernode", "register", str(platform.shops / f"{name}.pub"),
                                 flower.CONNECTION, "--name", name, "--format", "json"],
                                env=env, capture_output=True, text=True, timeout=120)
        try:
            node_id = json.loads(result.stdout)["node-id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"registering shop {name!r} with the SuperLink failed:\n{result.stdout}{result.stderr}")
        registered[name] = {"node_id": int(node_id), "supernode": keys.supernode}
        atomic_write_json(platform.registered, registered)
        echo(f"registered shop {name} as SuperNode {node_id}")


def _stop_on_signals(processes: list[subprocess.Popen]) -> Callable[[], None]:
    """SIGTERM/SIGINT to ``platform start`` stop its SuperLink and proxy (``processes``, as they are then)
    too; returns the function that restores the handlers."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        for process in reversed(processes):
            flower.stop(process)
        sys.exit(128 + signum)

    for sig in previous:
        signal.signal(sig, handler)
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]
