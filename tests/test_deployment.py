"""The README's deployment rehearsal, command by command, with real Flower processes and faults.

The test reads the ``<!-- rehearsal -->`` block of README.md and runs its commands in a shell:
the platform directory (a CA, the SuperLink's certificate, the roster) and four merchants' node
directories; ``fedinterest platform start`` runs ``flower-superlink`` with TLS and SuperNode
authentication on loopback, the Fleet API proxy on the rehearsal's address, and submits the run;
four ``fedinterest node start`` run ``flower-supernode`` against the proxy, each with its task
runner beside it. No simulation engine: the ServerApp is a process of Flower's own, installed from
the FAB that ``flwr run`` builds; each node's ClientApp is the installed release, run by the
node's task runner for the pinned bundle only, and the SecAgg+ state between stages travels
through the node's Context, which the SuperNode keeps between tasks.

On the way, as an attacker and as bad luck would:

- a node with a stolen SecAgg identity but a SuperNode key the platform never registered, and a
  registered node given the wrong CA, are both refused and say why;
- one node is SIGKILLed in the middle of round 2: the round finishes without it; the node is
  started again with the same command and rejoins;
- the whole platform (``platform start``, the SuperLink and the ServerApp) is SIGKILLed right
  after round 2's checkpoint, and the same ``platform start`` resumes the run from it;
- the platform's message log (every reply it received) holds masked uint32 vectors that do not
  correlate with the plaintext updates the nodes wrote to their own disk (FEDINTEREST_AUDIT_DIR),
  and integer codes only.

``test_deployment_resume.py`` shows what a crash costs: nothing (its own file, so that the two run
side by side under ``pytest -n 2``).

Cost: about 5½ minutes on 2 idle cores (9½ when every message started a fresh ``flwr-clientapp``
that imported torch, transformers and peft again; the node's task runner now loads them once).
Most of the rest is Flower's polling (an idle SuperNode asks for messages every 3 s; the server
pulls replies every 0.2 s) and the minute the SuperLink takes to declare the killed node gone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.deployment_processes import Processes, free_ports, kill_tree

pytestmark = pytest.mark.long(minutes=6)  # of real processes, on 2 cores: scheduled first (conftest)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARK = "<!-- rehearsal -->"
SHOPS, ROUNDS, EPSILON = ("shop_00", "shop_01", "shop_02", "shop_03"), 3, 8.0
VICTIM = "shop_03"  # the node killed in round 2
TIMEOUT = 900  # the whole rehearsal; about 5 minutes on 2 idle cores


def rehearsal_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The shell commands of the README's rehearsal block, in order."""
    text = readme.read_text()
    assert MARK in text, f"README.md lost its {MARK} block"
    block = text.split(MARK, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def environment(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env.update({
        "PORT": str(port),
        "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",  # start each ClientApp/ServerApp process sooner (default 1 s)
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FEDINTEREST_AUDIT_DIR": str(tmp_path / "plaintext"),  # each node keeps its plaintext updates, to compare
    })
    return env


def shell(command: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_for(condition, what: str, processes: Processes, running: tuple[str, ...], deadline: float) -> None:
    while not condition():
        processes.check_running(*running)
        assert time.time() < deadline, f"timed out waiting for {what}\n{processes.report()}"
        time.sleep(0.2)


def checkpoint(platform: Path) -> dict:
    try:
        return json.loads((platform / "run" / "checkpoint" / "checkpoint.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"round": 0, "history": []}


def rounds_of(state_dir: Path) -> list[int]:
    from fedinterest.client.ledger import PrivacyLedger

    try:
        return [r.server_round for r in PrivacyLedger.open(state_dir).rounds]
    except Exception:  # not written yet
        return []


def test_the_rehearsal_runbook_with_refused_nodes_a_killed_node_and_a_crashed_platform(tmp_path):
    from fedinterest.common.model.backbone import resolve_backbone
    from fedinterest.common.secagg import Roster
    from fedinterest.deploy import tls

    commands = rehearsal_commands()
    background = [c.rstrip("&").strip() for c in commands if c.endswith("&")]
    foreground = [c for c in commands if not c.endswith("&")]
    start_platform = next(c for c in background if c.startswith("fedinterest platform start"))
    start_node = {shop: next(c for c in background if f"rehearsal/{shop} " in c) for shop in SHOPS}
    assert len(background) == 1 + len(SHOPS)

    port = free_ports(len(SHOPS) + 3, contiguous=True)[0]  # PORT, one runtime port per node, two spare
    env = environment(tmp_path, port)
    os.environ.setdefault("FEDINTEREST_CACHE", str(tmp_path / "cache"))
    env["FEDINTEREST_CACHE"] = os.environ["FEDINTEREST_CACHE"]
    resolve_backbone("tiny")  # built once here, into the shared cache, not by five processes at once
    platform_dir = tmp_path / "rehearsal" / "platform"

    for command in foreground:
        done = shell(command, env, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    fingerprint = done.stdout.strip()  # the last foreground command prints the roster's fingerprint
    assert foreground[-1].startswith("fedinterest keys fingerprint")
    assert fingerprint == Roster.load(platform_dir / "roster.json").fingerprint() and len(fingerprint) == 64

    processes = Processes(tmp_path / "logs")
    deadline = time.time() + TIMEOUT
    started = time.time()
    try:
        processes.start("platform", ["bash", "-c", "exec " + start_platform], env, cwd=tmp_path)
        registered = platform_dir / "registered.json"
        wait_for(lambda: registered.exists() and len(json.loads(registered.read_text())) == len(SHOPS),
                 "the platform to register the shops", processes, ("platform",), deadline)

        # refused: a stolen SecAgg identity with a SuperNode key the platform never registered ...
        done = shell("fedinterest node init rehearsal/intruder", env, tmp_path)
        assert done.returncode == 0, done.stderr
        intruder = tmp_path / "rehearsal" / "intruder"
        (intruder / "identity.key").unlink()
        shutil.copy2(tmp_path / "rehearsal" / "shop_00" / "identity.key", intruder / "identity.key")
        attempt = start_node["shop_00"].replace("rehearsal/shop_00 ", "rehearsal/intruder ") + " --skip-check"
        attempt = attempt.replace("$((PORT + 1))", "$((PORT + 5))")
        refused = shell(attempt, env, tmp_path, timeout=180)
        assert refused.returncode != 0 and "refused this node" in refused.stdout, refused.stdout[-3000:]
        # ... and a registered node that trusts another CA
        other_key, other_ca = tls.make_ca("impostor")
        tls.write_certificate(tmp_path / "other-ca.pem", other_ca)
        attempt = start_node["shop_00"].replace("rehearsal/platform/ca.pem", str(tmp_path / "other-ca.pem"))
        attempt = attempt.replace("$((PORT + 1))", "$((PORT + 6))") + " --skip-check"
        refused = shell(attempt, env, tmp_path, timeout=180)
        assert refused.returncode != 0 and "does not verify against --ca" in refused.stdout, refused.stdout[-3000:]

        for shop in SHOPS:
            processes.start(shop, ["bash", "-c", "exec " + start_node[shop]], env, cwd=tmp_path)
        everyone = ("platform", *SHOPS)

        # one node dies in the middle of round 2 (it has opened its DP release for the round)
        victim_state = tmp_path / "rehearsal" / VICTIM
        wait_for(lambda: 2 in rounds_of(victim_state), f"{VICTIM} to start round 2", processes, everyone, deadline)
        kill_tree(processes.started[VICTIM])
        survivors = tuple(s for s in everyone if s != VICTIM)
        wait_for(lambda: checkpoint(platform_dir)["round"] >= 2, "round 2's checkpoint", processes, survivors, deadline)
        round_two = checkpoint(platform_dir)["history"][1]
        assert round_two["contributors"] == len(SHOPS) - 1 and len(round_two["dropped"]) == 1, round_two
        assert round_two["aborted"] is None, round_two

        # the whole platform crashes right after that checkpoint; the victim comes back meanwhile
        kill_tree(processes.started["platform"])
        processes.start(VICTIM, ["bash", "-c", "exec " + start_node[VICTIM]], env, cwd=tmp_path)
        platform = processes.start("platform", ["bash", "-c", "exec " + start_platform], env, cwd=tmp_path)
        wait_for(lambda: platform.poll() is not None, f"the rehearsal to finish (within {TIMEOUT} s)", processes,
                 SHOPS, deadline)
        assert platform.returncode == 0, processes.report()
        seconds = time.time() - started
    finally:
        leftover = processes.stop()
    assert not leftover, f"processes left running: {sorted(leftover)}"
    print(f"deployment rehearsal: {seconds:.0f} s from the platform's start to the exported adapter")
    assert "resuming the run from its checkpoint" in processes.log("platform", 10**6)

    # the export: the resumed run's history continues the crashed one's
    from safetensors.numpy import load_file

    from fedinterest.server.export import ADAPTER, read_model_card

    export = platform_dir / "run" / "export"
    card = read_model_card(export)
    history = card["history"]
    assert [h["round"] for h in history] == list(range(1, ROUNDS + 1)), history
    assert history[0]["contributors"] == len(SHOPS) and history[1]["contributors"] == len(SHOPS) - 1
    # round 3 again has every shop, unless a shop had already been charged for round 3 of the crashed run
    # in the instant before the crash and now declines rather than exceed its budget
    assert history[2]["contributors"] >= 3 and history[2]["aborted"] is None, history[2]
    assert history[-1]["eval"]["shops"] >= 3 and 0 <= card["final_metrics"]["hr@5"] <= 1
    weights = load_file(str(export / ADAPTER / "adapter_model.safetensors"))
    assert weights and all(np.isfinite(v).all() for v in weights.values())
    assert any(np.abs(v).sum() > 0 for k, v in weights.items() if "lora_B" in k)

    # every shop's ledger on its own side: within its budget across the crashes; the victim rejoined at round 3
    from fedinterest.client.ledger import PrivacyLedger

    for shop in SHOPS:
        ledger = PrivacyLedger.open(tmp_path / "rehearsal" / shop)
        assert 0 < ledger.spent <= EPSILON, (shop, ledger.spent)
        assert {1, 2, 3} <= set(rounds_of(tmp_path / "rehearsal" / shop)), (shop, rounds_of(tmp_path / "rehearsal" / shop))

    # the platform's message log: masked integer vectors that look like noise next to the true updates
    from fedinterest.common import wire
    from fedinterest.server.message_log import read_message_log

    entries = read_message_log(platform_dir / "messages")
    assert {e["type"] for e, _ in entries} >= {*wire.TRAIN_STAGES, *wire.EVALUATE_STAGES}
    masked = []
    for entry, arrays in entries:
        assert all(a.dtype == np.uint32 for a in arrays.values()), (entry["type"], {k: a.dtype for k, a in arrays.items()})
        if entry["type"] == wire.MASKED_INPUT:
            masked.extend(a.astype(np.float64) for a in arrays.values())
        metrics = entry["records"].get(wire.METRICS)
        if metrics:
            assert set(metrics["items"]) <= set(wire.OPENING_METRICS), metrics
            assert all(float(v).is_integer() for v in metrics["items"].values()), metrics
        for record in entry["records"].values():
            assert not any(isinstance(v, str) for v in record.get("items", {}).values()), record
    plaintext = [np.load(path)["update"] for path in glob.glob(str(tmp_path / "plaintext" / "*.npz"))]
    assert masked and plaintext
    for vector in masked:
        for update in plaintext:
            n = min(len(vector) - 1, len(update))
            corr = np.corrcoef(vector[:n], update[:n])[0, 1]
            assert abs(corr) < max(0.1, 5 / np.sqrt(n)), (corr, n)
