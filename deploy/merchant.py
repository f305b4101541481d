"""The merchant's side of a deployment: one directory that holds the shop's keys and state.

``init`` makes the two keys (Flower's SuperNode authentication key and the SecAgg identity) and
``public-keys.json``, the file the merchant sends to the platform. ``start`` checks the data (the
baseline table on it, or a clear error), pins the roster the platform published, and runs
``flower-supernode`` with TLS against the platform's CA, authenticated by the SuperNode key, with
the shop's node config. The privacy ledger is the data's, in the node's ledger home
(``$FEDINTEREST_HOME``, default ``~/.fedinterest``; ``client.ledger``), and the directory points to it:
a restarted node, or one started from another directory on the same data, keeps its budget.

Layout::

    node.json                    roster.json      the roster this shop pinned (compare its fingerprint)
    supernode.key supernode.pub  identity.key     public-keys.json  what the platform receives
    ledger.json (the pointer to the data's ledger), rounds, caches  (the shop's state directory)
    flwr/  FLWR_HOME
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from fedinterest.common.atomic import atomic_write_json, atomic_write_text
from fedinterest.common.config import ConfigError
from fedinterest.common.secagg import Identity, Roster
from fedinterest.common.secagg.identity import IDENTITY_FILE

from . import flower
from .app_pin import AppPin, pin_app
from .keys import ShopKeys, make_supernode_key
from .private import make_secret, private_directory, tighten

NODE_FORMAT = "fedinterest-node/1"
INSECURE_WARNING = ("WARNING: --insecure: this node talks to the platform WITHOUT TLS and without "
                    "authentication; use it on a closed test network only.")


class NodeDir:
    """The files of a node directory (see the module docstring); the directory is the shop's state-dir."""

    def __init__(self, root: str | Path) -> None:
        self.root = r = Path(root).resolve()
        self.settings_file, self.roster, self.flwr_home = r / "node.json", r / "roster.json", r / "flwr"
        self.supernode_key, self.supernode_pub = r / "supernode.key", r / "supernode.pub"
        self.identity, self.public_keys = r / IDENTITY_FILE, r / "public-keys.json"
        self.app_pin, self.superexec_secret = r / "app.json", r / "superexec.secret"
        self.subset_key = r / "subset.key"  # client.shop.SUBSET_KEY: the ClientApp makes it in its state dir

    def secrets(self) -> tuple[Path, ...]:
        """Every secret file of the node (mode 0600)."""
        return self.supernode_key, self.identity, self.superexec_secret, self.subset_key

    def check(self) -> None:
        """A node directory, private to its owner (0700, secrets 0600; tightened if an older init left them open)."""
        if not self.settings_file.is_file():
            raise ConfigError(f"{self.root} is not a node directory (no node.json); make one with "
                              "`fedinterest node init`")
        tighten(self.root, self.secrets())


def init_node(root: Path, echo: Callable[[str], None] = lambda line: None) -> ShopKeys:
    """Make the shop's keys and pin the installed app release; refuses to overwrite a node directory."""
    node = NodeDir(root)
    if node.settings_file.exists():
        raise ConfigError(f"{node.settings_file} exists: {node.root} is already a node directory")
    private_directory(node.root)
    Identity.generate().save(node.identity)
    supernode = make_supernode_key(node.supernode_key, node.supernode_pub)
    keys = ShopKeys(supernode=supernode, identity=Identity.load(node.identity).public_key)
    atomic_write_text(node.public_keys, keys.to_json() + "\n")
    make_secret(node.superexec_secret)
    pin_app(node.app_pin, echo=echo)
    atomic_write_json(node.settings_file, {"format": NODE_FORMAT})
    return keys


def check_app(node: NodeDir, repin: bool = False, echo: Callable[[str], None] = print) -> AppPin:
    """The app release this node serves: the pinned one, still the installed one (or re-pinned with ``repin``)."""
    return pin_app(node.app_pin, repin=repin, echo=echo)


def pin_roster(node: NodeDir, published: Path, repin: bool = False) -> Roster:
    """The roster this shop trusts: ``published`` on first start; after that, only the same one unless ``repin``."""
    roster = Roster.load(published)
    own = Identity.load(node.identity).public_key
    if own not in roster:
        raise ConfigError(f"{published}: this shop's identity key is not on the roster; send {node.public_keys} "
                          "to the platform (`fedinterest platform add-shop`) and get the new roster")
    if node.roster.exists() and not repin:
        pinned = Roster.load(node.roster)
        if pinned.fingerprint() != roster.fingerprint():
            raise ConfigError(f"{published} (fingerprint {roster.fingerprint()}) differs from the roster this node "
                              f"pinned (fingerprint {pinned.fingerprint()}); compare the new fingerprint with the "
                              "other merchants out of band, then start with --repin")
        return pinned
    roster.save(node.roster)
    return roster


def check_data(data: str, data_format: str | None, shop: str | None, echo: Callable[[str], None]) -> None:
    """Load the shop's data and print the baseline table on it: bad input fails here, before any round."""
    from fedinterest.common.baselines import run_baselines
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import LoadOptions, load_events
    from fedinterest.common.report import format_table
    from fedinterest.common.task import prepare_task

    table = load_events(data, LoadOptions(format=data_format, shop=shop))
    echo(table.report.summary())
    task = prepare_task(table, TaskConfig())
    echo(task.summary())
    echo(format_table(run_baselines(task.train, task.test)))


def supernode_command(node: NodeDir, *, platform: str, ca: Path | None, runtime_port: int,
                      node_config: dict) -> list[str]:
    """``flower-supernode`` for this shop: TLS against ``ca`` and authenticated, or ``--insecure`` without a CA.

    ``--isolation process``: the SuperNode starts no app process; only a runner holding the node's
    SuperExec secret claims its tasks (:func:`runner_command`).
    """
    security = ["--insecure"] if ca is None else [
        "--root-certificates", str(Path(ca).resolve()), "--auth-supernode-private-key", str(node.supernode_key)]
    return [flower.binary("flower-supernode"), *security, "--superlink", platform, "--isolation", "process",
            "--superexec-auth-secret-file", str(node.superexec_secret), "--host", "127.0.0.1",
            "--port", str(runtime_port), "--node-config", flower.toml_pairs(node_config)]


def runner_command(node: NodeDir, *, runtime_port: int, app: AppPin) -> list[str]:
    """Our task runner beside the SuperNode: the installed ClientApp, for tasks of the pinned bundle only.

    The SuperExec secret it shares with the SuperNode is made here if an older ``init`` did not.
    """
    make_secret(node.superexec_secret)
    return [sys.executable, "-m", "fedinterest.deploy.node_runner", "--runtime", f"127.0.0.1:{runtime_port}",
            "--secret-file", str(node.superexec_secret), "--app-hash", app.fab_hash, "--parent-pid", str(os.getpid())]


def node_config(node: NodeDir, *, data: str, data_format: str | None, shop: str | None, epsilon: float | None,
                extra: dict, backbone: str = "minilm") -> dict:
    """The SuperNode's node config, checked the way the ClientApp will read it.

    ``backbone`` is the node's own: the ClientApp refuses a round naming another, and loads it only while
    its weights have the sha256 pinned here (minilm's is built in and checked now).
    """
    from fedinterest.client.node import FLOWER_KEYS, NodeSettings
    from fedinterest.common.model.backbone import resolve_backbone, weights_sha256

    resolved = resolve_backbone(backbone)
    config: dict = {"data-path": str(Path(data).resolve()), "state-dir": str(node.root), "roster": str(node.roster),
                    "backbone": resolved.source if resolved.kind == "directory" else backbone,
                    "backbone-sha256": weights_sha256(resolved)}
    if data_format:
        config["data-format"] = data_format
    if shop:
        config["shop"] = shop
    if epsilon is not None:
        config["epsilon"] = float(epsilon)
    clash = set(extra) & set(config)
    if clash:
        raise ConfigError(f"--node-config: {sorted(clash)} are set by their own options")
    flower_only = set(extra) & FLOWER_KEYS
    if flower_only:
        raise ConfigError(f"--node-config: {sorted(flower_only)} belong to Flower's simulation engine, not to a node")
    config.update(extra)
    NodeSettings.from_node_config(config)
    return config


def run_node(node: NodeDir, supernode: list[str], runner: list[str], echo: Callable[[str], None]) -> int:
    """Run the SuperNode and the task runner in this process group, their logs passing through.

    SIGTERM and SIGINT reach both (they stop cleanly); when either stops, the other is stopped
    too, and the reason is explained. Killing this process group kills all three.
    """
    import collections
    import signal
    import threading
    import time

    env = flower.environment(node.flwr_home)
    processes = {name: subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace")
                 for name, command in (("supernode", supernode), ("runner", runner))}

    def forward(signum, frame) -> None:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    recent: collections.deque[str] = collections.deque(maxlen=100)

    def pump(process: subprocess.Popen) -> None:
        for line in process.stdout:
            echo(line.rstrip("\n"))
            recent.append(line)

    readers = [threading.Thread(target=pump, args=(p,), daemon=True) for p in processes.values()]
    for reader in readers:
        reader.start()
    while all(p.poll() is None for p in processes.values()):
        time.sleep(0.2)
    first = next(name for name, p in processes.items() if p.poll() is not None)
    for process in processes.values():
        _stop(process)
    for reader in readers:
        reader.join(timeout=30)
    code = processes["supernode"].returncode
    if first == "runner" and processes["runner"].returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        echo(f"fedinterest node start: error: the task runner stopped (exit {processes['runner'].returncode}); "
             "its log is above. The node stops with it")
        return processes["runner"].returncode or 1
    reason = diagnose("".join(recent)) if code else None
    if reason:
        echo(f"fedinterest node start: error: {reason}")
    return code


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def diagnose(log: str) -> str | None:
    """Why a SuperNode stopped, in the merchant's terms, from the end of its log."""
    if "CERTIFICATE_VERIFY_FAILED" in log or "SSL/TLS handshake error" in log:
        return ("the platform's TLS certificate does not verify against --ca: use the ca.pem the platform sent, "
                "and the address its certificate names")
    if "Failed to activate SuperNode" in log:
        return ("the platform refused this node: its SuperNode key is not registered. Send public-keys.json to "
                "the platform (`platform add-shop`), wait until `platform start` has registered it, and start again")
    if "Exit Code: 305" in log:
        return "the SuperNode could not reach the platform; check --platform and the network"
    return None
