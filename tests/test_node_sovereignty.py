"""The merchant's machine is the merchant's: the node runs only the release it installed, and
only the Fleet API faces the network.

With the real ``flower-superlink`` and ``flower-supernode`` started by ``fedinterest platform
start`` and ``fedinterest node start`` (the platform on this machine's non-loopback address when
it has one):

- an outsider holding only ``ca.pem`` can neither list runs or nodes, nor register a node, nor
  submit a run, with the real ``flwr`` CLI or raw HTTP; the SuperLink's processes listen on
  loopback only and the proxy alone on the public address;
- the platform itself pushes a bundle whose ClientApp reads the node's ``identity.key``: every
  node refuses it before any of its code runs (no marker, no key anywhere, the declared error
  code, the refused hash in the node's log), while the genuine run beside it finishes.

And, without processes: the proxy's route filter against a real upstream, the pinned hash, and
the modes of the node's and the platform's files.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from fedinterest.common.config import ConfigError
from fedinterest.deploy import flower
from fedinterest.deploy.fleet_proxy import FLEET_PREFIX, FLEET_ROUTES, FleetProxy, fleet_route, forwarded_headers
from tests.deployment_processes import Processes, descendants, free_ports

pytestmark = pytest.mark.long(minutes=3)  # of real processes, on 2 cores: scheduled first (conftest)
from tests.test_deployment import environment, shell, wait_for

SHOPS = ("shop_00", "shop_01", "shop_02")  # the synthetic shops, one node directory each
TIMEOUT = 600

# ----------------------------------------------------------------------------- the proxy's filter


def test_the_proxy_knows_exactly_the_fleet_routes_of_this_flower_release():
    from fedinterest.deploy.flower_internals import fleet_routes

    assert {FLEET_PREFIX + r for r in FLEET_ROUTES} == fleet_routes()
    assert fleet_route("POST", "/v1/fleet/pull-messages") == "pull-messages"
    for method, path in [("GET", "/v1/fleet/pull-messages"), ("PUT", "/v1/fleet/push-messages"),
                         ("POST", "/v1/fleet/pull-messages/"), ("POST", "/v1/fleet/../control/list-runs"),
                         ("POST", "/v1/fleet//pull-messages"), ("POST", "/v1/control/list-runs"),
                         ("POST", "/v1/control/register-node"), ("POST", "/v1/runtime/acquire-task"),
                         ("GET", "/health"), ("POST", "/V1/FLEET/pull-messages"), ("POST", "/v1/fleet/"),
                         ("POST", "/docs"), ("POST", "/v1/fleetpull-messages")]:
        assert fleet_route(method, path) is None, (method, path)
    headers = [(b"host", b"x"), (b"connection", b"keep-alive, x-drop"), (b"x-drop", b"1"), (b"te", b"trailers"),
               (b"content-length", b"3"), (b"flwr-public-key", b"abc"), (b"flwr-signature", b"sig"),
               (b"content-type", b"application/protobuf")]
    assert forwarded_headers(headers) == [(b"flwr-public-key", b"abc"), (b"flwr-signature", b"sig"),
                                          (b"content-type", b"application/protobuf")]


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in SuperLink that records what reaches it."""

    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-type", "application/protobuf")
        self.end_headers()
        self.wfile.write(b"reply:" + body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@contextmanager
def serving(app) -> Iterator[httpx.Client]:
    """``app`` served by uvicorn on a free loopback port in a thread; a client of it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_ports(1)[0], log_level="error", ws="none",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the proxy did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_proxy_forwards_fleet_posts_and_refuses_everything_else():
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    _Upstream.seen = []
    try:
        app = FleetProxy(f"127.0.0.1:{upstream.server_address[1]}", ca=None, max_body=1024)
        with serving(app) as client:
            answer = client.post("/v1/fleet/pull-messages?x=1", content=b"hello",
                                 headers={"flwr-public-key": "pk", "flwr-signature": "sig", "x-custom": "1"})
            assert answer.status_code == 200 and answer.content == b"reply:hello"
            method, path, headers, body = _Upstream.seen[-1]
            assert (method, path, body) == ("POST", "/v1/fleet/pull-messages", b"hello")
            assert headers["flwr-public-key"] == "pk" and headers["flwr-signature"] == "sig"
            assert headers["x-custom"] == "1"
            for method, path in [("GET", "/v1/fleet/pull-messages"), ("TRACE", "/v1/fleet/pull-messages"),
                                 ("POST", "/v1/control/list-runs"),
                                 ("POST", "/v1/control/register-node"), ("POST", "/v1/runtime/acquire-task"),
                                 ("GET", "/health"), ("POST", "/v1/fleet/nothing")]:
                assert client.request(method, path, content=b"x").status_code == 404, (method, path)
            assert len(_Upstream.seen) == 1  # nothing refused reached the SuperLink
            assert client.post("/v1/fleet/push-object", content=b"x" * 1025).status_code == 413

            def chunks():
                for _ in range(3):
                    yield b"y" * 600

            assert client.post("/v1/fleet/push-object", content=chunks()).status_code == 413  # no content-length
            assert len(_Upstream.seen) == 1
    finally:
        upstream.shutdown()
        upstream.server_close()
    dead = FleetProxy(f"127.0.0.1:{free_ports(1)[0]}", ca=None)
    with serving(dead) as client:
        answer = client.post("/v1/fleet/get-run", content=b"x")
        assert answer.status_code == 502 and answer.text == "bad gateway"


# ----------------------------------------------------------------------------- the pinned app


def test_the_pinned_hash_is_the_release_and_any_changed_file_changes_it(tmp_path):
    from fedinterest.deploy.app_pin import AppPin, pin_app, release_hash
    from fedinterest.deploy.flower_internals import fab_sha256

    first = release_hash()
    assert first == release_hash() and len(first) == 64
    app = flower.make_app(tmp_path / "app", flower.DEPLOYED)
    assert fab_sha256(app) == first  # the bundle `platform start` ships is the pinned one
    with open(app / "client" / "app.py", "a") as f:
        f.write("\n# one more line\n")
    assert fab_sha256(app) != first

    pin = tmp_path / "app.json"
    messages: list[str] = []
    assert pin_app(pin, echo=messages.append).fab_hash == first and "pinned" in messages[-1]
    assert pin_app(pin, echo=messages.append).fab_hash == first
    AppPin("0" * 64, "0.0.1").save(pin)  # as if the installed release changed since the pin
    with pytest.raises(ConfigError, match="--repin-app"):
        pin_app(pin)
    assert pin_app(pin, repin=True, echo=messages.append).fab_hash == first and "re-pinned" in messages[-1]
    pin.write_text("{}")
    with pytest.raises(ConfigError, match="app.json: not a"):
        pin_app(pin)


def test_a_clientapp_that_raises_is_answered_with_an_error_and_the_runner_goes_on():
    """The installed ClientApp raises on a message type it does not know (before its own error mod):
    the runner answers with the declared internal-error code, never the exception's text."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedinterest.client.app import app as installed
    from fedinterest.common import wire
    from fedinterest.deploy.flower_internals import COMPLETED, FAILED, AcquiredTask, set_task_identity
    from fedinterest.deploy.node_runner import TaskRunner

    runner = TaskRunner(f"127.0.0.1:{free_ports(1)[0]}", b"s" * 32, "0" * 64, installed)
    task = AcquiredTask(task_id=7, run_id=3, fab_hash="0" * 64, token="t")
    context = Context(run_id=3, node_id=5, node_config={}, state=RecordDict(), run_config={})

    def incoming(message_type: str) -> Message:
        set_task_identity(task, node_id=1)  # as the platform's ServerApp, which sends it
        message = Message(RecordDict({"x": ConfigRecord({"a": 1})}), 5, message_type)
        message.metadata.__dict__["_message_id"] = message.object_id
        return message

    reply, status, details = runner.run_app(task, incoming("train.nonsense"), context)
    assert status == FAILED and reply.has_error() and reply.error.code == wire.ERROR_INTERNAL
    assert reply.error.reason == details == wire.ERROR_CODES[wire.ERROR_INTERNAL]
    assert reply.metadata.reply_to_message_id and runner.served == 0
    # the next message is answered as ever (here: a train without its records, refused by the app itself)
    reply, status, _ = runner.run_app(task, incoming("train"), context)
    assert status == COMPLETED and reply.has_error() and reply.error.code in wire.ERROR_CODES
    assert runner.served == 1
    runner.close()


# ----------------------------------------------------------------------------- modes


def test_node_and_platform_directories_are_private_and_the_ca_key_is_not_kept(tmp_path, synthetic_dir):
    from fedinterest.deploy import tls
    from fedinterest.deploy.merchant import NodeDir, init_node
    from fedinterest.deploy.platform import PlatformDir, init_platform, start_platform

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    init_node(tmp_path / "node")
    node = NodeDir(tmp_path / "node")
    assert mode(node.root) == 0o700
    for secret in node.secrets():
        assert not secret.exists() or mode(secret) == 0o600, secret
    from fedinterest.client.shop import SUBSET_KEY, subset_key

    assert node.subset_key.name == SUBSET_KEY
    subset_key(node.root)  # what the ClientApp makes on a deployed shop's first round
    assert mode(node.subset_key) == 0o600
    assert node.app_pin.is_file()
    os.chmod(node.root, 0o755)  # as an older init left them
    os.chmod(node.identity, 0o644)
    node.check()
    assert mode(node.root) == 0o700 and mode(node.identity) == 0o600

    platform = init_platform(tmp_path / "platform", address="fl.example.com:9092", catalogue=synthetic_dir)
    assert mode(platform.root) == 0o700 and mode(platform.key) == 0o600
    assert [p.name for p in platform.root.rglob("*") if p.suffix == ".key"] == ["server.key"]
    assert set(tls.certificate_hosts(platform.cert)) == {"fl.example.com", "localhost", "127.0.0.1"}
    with pytest.raises(ConfigError, match="inside the platform directory"):
        init_platform(tmp_path / "p2", address="127.0.0.1:9092", catalogue=synthetic_dir,
                      ca_key_out=tmp_path / "p2" / "keys" / "ca.key")
    kept = init_platform(tmp_path / "p3", address="127.0.0.1:9092", catalogue=synthetic_dir,
                         ca_key_out=tmp_path / "offline" / "ca.key")
    assert mode(tmp_path / "offline" / "ca.key") == 0o600 and not (kept.root / "ca.key").exists()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_key = serialization.load_pem_private_key((tmp_path / "offline" / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(kept.ca.read_bytes())
    assert ca_key.public_key().public_numbers() == ca.public_key().public_numbers()
    # an older platform directory: a stray ca.key is refused, loose modes are tightened
    shutil.copy2(tmp_path / "offline" / "ca.key", kept.root / "ca.key")
    os.chmod(kept.root, 0o755)
    os.chmod(kept.key, 0o644)
    with pytest.raises(ConfigError, match="ca.key: the CA's private key is in the platform directory"):
        start_platform(kept.root)
    assert mode(kept.root) == 0o700 and mode(kept.key) == 0o600
    assert isinstance(PlatformDir(kept.root).settings(), dict)


# ----------------------------------------------------------------------------- real processes

EVIL_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "not-fedinterest"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "platform"

[tool.flwr.app.components]
serverapp = "evil.server:app"
clientapp = "evil.client:app"

[tool.flwr.app.config]
out = ""
marker-dir = ""
nodes = 3
"""

EVIL_CLIENT = '''\
"""A ClientApp that takes the shop's identity key home."""
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def steal(message, context):
    state = Path(str(context.node_config["state-dir"]))
    key = (state / "identity.key").read_bytes()
    (Path(str(context.run_config["marker-dir"])) / f"ran-on-{context.node_id}").write_text("ran")
    (state / "BUNDLE-CODE-RAN").write_text("ran")
    return Message(RecordDict({"loot": ConfigRecord({"identity": key.hex()})}), reply_to=message)
'''

EVIL_SERVER = '''\
"""Sends one train message to every node and writes down what comes back."""
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp


app = ServerApp()


@app.main()
def main(grid, context):
    wanted, deadline = int(context.run_config["nodes"]), time.time() + 300
    nodes = []
    while time.time() < deadline:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted:
            break
        time.sleep(0.5)
    messages = [Message(RecordDict({"please": ConfigRecord({"x": 1})}), node, "train") for node in nodes]
    found = []
    for reply in grid.send_and_receive(messages, timeout=300):
        entry = {"node": reply.metadata.src_node_id}
        if reply.has_error():
            entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
        else:
            entry["content"] = {name: dict(record.items()) for name, record in reply.content.config_records.items()}
        found.append(entry)
    Path(str(context.run_config["out"])).write_text(json.dumps({"nodes": nodes, "replies": found}))
'''


def write_evil_app(directory: Path) -> Path:
    (directory / "evil").mkdir(parents=True)
    (directory / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (directory / "evil" / "__init__.py").write_text("")
    (directory / "evil" / "client.py").write_text(EVIL_CLIENT)
    (directory / "evil" / "server.py").write_text(EVIL_SERVER)
    return directory


def public_ipv4() -> str | None:
    """This machine's first non-loopback IPv4 address, if it has one."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not address.startswith("127."):
            return address
    return None


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket on this machine: inode -> (address, port), from /proc/net/tcp and tcp6."""
    found = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                host = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                host = socket.inet_ntop(socket.AF_INET, raw[::-1])
            found[int(fields[9])] = (host, int(port, 16))
    return found


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_of(pids) -> set[tuple[str, int]]:
    table = listening_sockets()
    return {table[inode] for pid in pids for inode in sockets_of(pid) if inode in table}


def test_an_outsider_reaches_only_the_fleet_api_and_the_platform_cannot_run_its_bundle_on_a_node(tmp_path):
    from fedinterest.common import wire
    from fedinterest.common.model.backbone import resolve_backbone
    from fedinterest.deploy.app_pin import release_hash
    from fedinterest.deploy.flower_internals import fab_sha256
    from fedinterest.deploy.keys import make_supernode_key
    from fedinterest.deploy.merchant import NodeDir

    import httpx

    host = public_ipv4() or "127.0.0.1"
    port = free_ports(len(SHOPS) + 1, contiguous=True)[0]
    address = f"{host}:{port}"
    env = environment(tmp_path, port)
    os.environ.setdefault("FEDINTEREST_CACHE", str(tmp_path / "cache"))
    env["FEDINTEREST_CACHE"] = os.environ["FEDINTEREST_CACHE"]
    resolve_backbone("tiny")
    platform_dir = tmp_path / "platform"
    setup = [f"fedinterest synth --out data --shops {len(SHOPS)} --users 120 --days 20 --seed 7",
             f"fedinterest platform init platform --address {address} --catalogue data --backbone tiny --rounds 1 "
             f"--min-shops {len(SHOPS)} --run-config \"batch-size=16 physical-batch-size=16 max-steps=2 "
             "max-length=32 eval-per-user=1 lr=0.02 round-timeout=120.0\""]
    setup += [f"fedinterest node init {shop}" for shop in SHOPS]
    setup += [f"fedinterest platform add-shop platform {shop} {shop}/public-keys.json" for shop in SHOPS]
    for command in setup:
        done = shell(command, env, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    pinned = release_hash()
    assert all(json.loads(NodeDir(tmp_path / s).app_pin.read_text())["fab_sha256"] == pinned for s in SHOPS)
    evil_app = write_evil_app(tmp_path / "evil-app")
    evil_hash = fab_sha256(evil_app)
    markers = tmp_path / "markers"
    markers.mkdir()

    processes = Processes(tmp_path / "logs")
    deadline = time.time() + TIMEOUT
    started = time.time()
    try:
        platform = processes.start("platform", ["bash", "-c", f"exec fedinterest platform start platform --keep-running"],
                                   env, cwd=tmp_path)
        registered = platform_dir / "registered.json"
        wait_for(lambda: registered.exists() and len(json.loads(registered.read_text())) == len(SHOPS),
                 "the platform to register the shops", processes, ("platform",), deadline)

        # what listens where: the SuperLink's processes on loopback only, the proxy alone on the public address
        tree = descendants([platform.pid])
        superlink = next(pid for pid in tree if "flower-superlink" in cmdline(pid))
        proxy = next(pid for pid in tree if "deploy.fleet_proxy" in cmdline(pid))
        superlink_tree = {superlink} | descendants([superlink])
        internal = listening_of(superlink_tree)
        assert internal and all(h in ("127.0.0.1", "::1") for h, _ in internal), internal
        assert listening_of([proxy]) == {(host, port)}
        on_public = {pid for pid in os.listdir("/proc") if pid.isdigit()
                     for h, p in listening_of([int(pid)]) if p == port and h in (host, "0.0.0.0", "::")}
        assert on_public == {str(proxy)}, on_public
        internal_port = next(p for _, p in internal)
        if host != "127.0.0.1":  # the internal port is not reachable through the public interface
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, internal_port), timeout=5).close()

        # an outsider with ca.pem only, with Flower's own CLI ...
        outsider_home = tmp_path / "outsider"
        flower.write_connection(outsider_home, address, platform_dir / "ca.pem")
        outsider_env = {**env, "FLWR_HOME": str(outsider_home)}
        make_supernode_key(tmp_path / "outsider.key", tmp_path / "outsider.pub")
        for command in (["flwr", "ls", flower.CONNECTION, "--format", "json"],
                        ["flwr", "supernode", "list", flower.CONNECTION, "--format", "json"],
                        ["flwr", "supernode", "register", str(tmp_path / "outsider.pub"), flower.CONNECTION,
                         "--format", "json"],
                        ["flwr", "run", str(evil_app), flower.CONNECTION, "--run-config",
                         f"out='{tmp_path}/outsider-run.json' marker-dir='{markers}'"]):
            done = subprocess.run(command, env=outsider_env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=120)
            output = done.stdout + done.stderr
            assert "Successfully started run" not in output and '"success": true' not in output, output
            assert done.returncode != 0 or '"success": false' in output, (command, output)
        # ... and with raw HTTPS: no Control, runtime, health or docs route answers
        from flwr.superlink.routers.control.router import router as control_router

        refused = [route.path for route in control_router.routes]
        refused += [f"/v1/runtime/{name}" for name in ("acquire-task", "pull-task-input", "push-task-output",
                                                       "create-task", "get-nodes", "push-messages", "pull-messages")]
        with httpx.Client(base_url=f"https://{address}", verify=ssl.create_default_context(cafile=str(platform_dir / "ca.pem")),
                          timeout=30) as client:
            for path in refused:
                answer = client.post(path, content=b"\x08\x01", headers={"content-type": "application/protobuf"})
                assert answer.status_code == 404 and answer.text == "not found", (path, answer.status_code)
            for path in ("/health", "/docs", "/openapi.json", "/v1/fleet/pull-messages"):
                assert client.get(path).status_code == 404, path
            # the Fleet API itself: an unauthenticated node cannot register itself
            assert client.post("/v1/fleet/register-node", content=b"",
                               headers={"content-type": "application/protobuf"}).status_code >= 400
        assert "refused POST /v1/control/list-runs" in (platform_dir / "logs" / "fleet-proxy.log").read_text()

        # the platform pushes its own bundle through its loopback Control API, before the nodes come up
        platform_env = {**env, "FLWR_HOME": str(platform_dir / "flwr")}
        done = subprocess.run(["flwr", "run", str(evil_app), flower.CONNECTION, "--run-config",
                               f"out='{tmp_path}/evil-run.json' marker-dir='{markers}' nodes={len(SHOPS)}"],
                              env=platform_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Successfully started run" in done.stdout, done.stdout + done.stderr
        evil_run = int(done.stdout.split("Successfully started run", 1)[1].split()[0])

        for shop in SHOPS:
            command = (f"fedinterest node start {shop} --data data --shop {shop} --epsilon 8 --backbone tiny "
                       f"--platform {address} "
                       f"--ca platform/ca.pem --roster platform/roster.json --runtime-port $((PORT + "
                       f"{1 + SHOPS.index(shop)})) --skip-check --node-config \"max-train-per-user=1\"")
            processes.start(shop, ["bash", "-c", "exec " + command], env, cwd=tmp_path)
        everyone = ("platform", *SHOPS)
        wait_for(lambda: (tmp_path / "evil-run.json").exists(), "the platform's bundle to get its replies",
                 processes, everyone, deadline)
        wait_for(lambda: "the run finished" in processes.log("platform", 10**6), "the genuine run to finish",
                 processes, everyone, deadline)
        seconds = time.time() - started
    finally:
        leftover = processes.stop()
    assert not leftover, f"processes left running: {sorted(leftover)}"
    print(f"sovereignty test: {seconds:.0f} s from the platform's start to the end of both runs")

    # the bundle never ran: no marker, no installed copy, no key in any reply or anywhere on the platform
    result = json.loads((tmp_path / "evil-run.json").read_text())
    assert len(result["nodes"]) == len(SHOPS) and len(result["replies"]) == len(SHOPS), result
    for reply in result["replies"]:
        assert "content" not in reply and reply["error"] == {
            "code": wire.ERROR_UNTRUSTED_APP, "reason": wire.ERROR_CODES[wire.ERROR_UNTRUSTED_APP]}, reply
    assert not list(markers.iterdir())
    platform_files = b"".join(p.read_bytes() for p in platform_dir.rglob("*") if p.is_file())
    for shop in SHOPS:
        node = NodeDir(tmp_path / shop)
        assert not (node.root / "BUNDLE-CODE-RAN").exists()
        assert not (node.flwr_home / "apps").exists() or not any((node.flwr_home / "apps").iterdir())
        assert stat.S_IMODE(node.root.stat().st_mode) == 0o700
        for secret in node.secrets():  # subset.key only once a round has drawn a training subset
            assert not secret.exists() or stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        key = node.identity.read_bytes()
        assert key not in platform_files and key.hex().encode() not in platform_files
        log = processes.log(shop, 10**7)
        before, refusal, after = log.partition("REFUSED task")
        refused_line = after.splitlines()[0]
        assert refusal and f"of run {evil_run}:" in refused_line, log[-3000:]
        assert f"sha256 {evil_hash}" in refused_line and f"pinned sha256 {pinned}" in refused_line, refused_line
        # and the node went on serving the genuine app after refusing
        assert any(line.startswith("answered task of run") and f"run {evil_run}:" not in line
                   for line in (l.split("[node-runner] ", 1)[-1] for l in after.splitlines())), after[-3000:]
    assert "the run finished; the adapter is in" in processes.log("platform", 10**6)


def test_an_insecure_platform_hides_its_control_api_too(tmp_path, synthetic_dir):
    """``--insecure`` (closed test networks) drops TLS, not the proxy: the SuperLink is still on loopback."""
    import httpx

    from fedinterest.deploy.merchant import init_node
    from fedinterest.deploy.platform import add_shop, init_platform

    port = free_ports(1)[0]
    init_platform(tmp_path / "platform", address=f"127.0.0.1:{port}", catalogue=synthetic_dir, insecure=True,
                  run_config={"min-shops": 3})
    for shop in ("a", "b", "c"):
        add_shop(tmp_path / "platform", shop, init_node(tmp_path / shop))
    processes = Processes(tmp_path / "logs")
    deadline = time.time() + 120
    try:
        platform = processes.start("platform", ["fedinterest", "platform", "start", str(tmp_path / "platform")],
                                   environment(tmp_path, port), cwd=tmp_path)
        wait_for(lambda: "Fleet API proxy listening" in processes.log("platform"), "the proxy", processes,
                 ("platform",), deadline)
        superlink = next(pid for pid in descendants([platform.pid]) if "flower-superlink" in cmdline(pid))
        internal = listening_of({superlink} | descendants([superlink]))
        assert internal and all(host == "127.0.0.1" for host, _ in internal), internal
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.post("/v1/control/list-runs", content=b"").status_code == 404
            assert client.post("/v1/fleet/get-run", content=b"").status_code not in (404, 502)  # reaches the SuperLink
        assert "WARNING: --insecure" in processes.log("platform")
    finally:
        leftover = processes.stop()
    assert not leftover, f"processes left running: {sorted(leftover)}"
