"""What a crash of the platform costs a deployment: nothing.

With rehearsal nodes (seeded, ``rehearsal=true``) the platform is SIGKILLed right after round 2's
checkpoint and started again, and the final adapter is bit-identical to the one the simulation
engine makes from the same shops and seeds without a crash (deployed shops draw from the OS
CSPRNG, so only a rehearsal can be compared). Real processes, as in ``test_deployment.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.deployment_processes import Processes, free_ports, kill_tree
from tests.test_deployment import EPSILON, ROUNDS, TIMEOUT, checkpoint, environment, shell, wait_for

pytestmark = pytest.mark.long(minutes=4)  # of real processes, on 2 cores: scheduled first (conftest)


def test_a_crashed_platform_resumes_to_the_adapter_of_an_uninterrupted_run(tmp_path):
    """Rehearsal nodes (``seed`` with ``rehearsal=true``): the platform SIGKILLed after round 2 and
    started again finishes with exactly the adapter that the simulation engine makes from the same
    shops, seeds and settings without a crash."""
    from safetensors.numpy import load_file

    from fedinterest.common.model.backbone import resolve_backbone
    from fedinterest.deploy.platform import init_platform
    from fedinterest.server.export import ADAPTER
    from fedinterest.server.settings import save_task_spec
    from fedinterest.simulations.runner import prepare, run_federation
    from fedinterest.simulations.synthetic import SynthConfig

    os.environ.setdefault("FEDINTEREST_CACHE", str(tmp_path / "cache"))
    os.environ.setdefault("FLWR_HOME", str(tmp_path / "flwr-home"))  # the in-process simulation engine's
    resolve_backbone("tiny")
    prepared = prepare(tmp_path / "sim", shops=3, synth=SynthConfig(shops=3, users=180, days=20, seed=5),
                       max_train_per_user=1, epsilon=EPSILON, seed=3)
    run_config = {"num-server-rounds": ROUNDS, "backbone": "tiny", "min-shops": 3, "seed": 3, "batch-size": 16,
                  "physical-batch-size": 16, "max-steps": 3, "max-length": 40, "eval-per-user": 1, "lr": 0.02,
                  "round-timeout": 120.0}
    reference = run_federation(prepared, {**run_config, "out-dir": str(tmp_path / "reference")}).result

    port = free_ports(len(prepared.shops) + 1, contiguous=True)[0]
    env = environment(tmp_path, port)
    env["FEDINTEREST_CACHE"] = os.environ["FEDINTEREST_CACHE"]
    spec = tmp_path / "task_spec.json"
    save_task_spec(prepared.task, spec)
    platform_dir = tmp_path / "platform"
    init_platform(platform_dir, address=f"127.0.0.1:{port}", task_spec=spec, run_config=run_config)
    nodes = {}
    for pid, name in enumerate(prepared.shops):
        node = prepared.node_configs[pid]
        for command in (f"fedinterest node init {name}",
                        f"fedinterest platform add-shop {platform_dir} {name} {name}/public-keys.json"):
            done = shell(command, env, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
        nodes[name] = (f"fedinterest node start {name} --data {node['data-path']} --shop {node['shop']} "
                       f"--epsilon {node['epsilon']} --backbone tiny --platform 127.0.0.1:{port} --ca {platform_dir}/ca.pem "
                       f"--roster {platform_dir}/roster.json --runtime-port {port + 1 + pid} --skip-check "
                       f"--node-config \"max-train-per-user={node['max-train-per-user']} threads={node['threads']} "
                       f"seed={node['seed']} rehearsal=true\"")
    start_platform = f"fedinterest platform start {platform_dir}"

    processes = Processes(tmp_path / "logs")
    deadline = time.time() + TIMEOUT
    try:
        processes.start("platform", ["bash", "-c", "exec " + start_platform], env, cwd=tmp_path)
        registered = platform_dir / "registered.json"
        wait_for(lambda: registered.exists() and len(json.loads(registered.read_text())) == len(nodes),
                 "the platform to register the shops", processes, ("platform",), deadline)
        for name, command in nodes.items():
            processes.start(name, ["bash", "-c", "exec " + command], env, cwd=tmp_path)
        wait_for(lambda: checkpoint(platform_dir)["round"] >= 2, "round 2's checkpoint", processes,
                 ("platform", *nodes), deadline)
        kill_tree(processes.started["platform"])
        platform = processes.start("platform", ["bash", "-c", "exec " + start_platform], env, cwd=tmp_path)
        wait_for(lambda: platform.poll() is not None, f"the run to finish (within {TIMEOUT} s)", processes,
                 tuple(nodes), deadline)
        assert platform.returncode == 0, processes.report()
    finally:
        leftover = processes.stop()
    assert not leftover, f"processes left running: {sorted(leftover)}"
    assert "resuming the run from its checkpoint" in processes.log("platform", 10**6)

    expected = load_file(str(Path(reference.export_dir) / ADAPTER / "adapter_model.safetensors"))
    got = load_file(str(platform_dir / "run" / "export" / ADAPTER / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
