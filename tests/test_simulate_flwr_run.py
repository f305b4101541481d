"""`fedinterest simulate` runs the federation with `flwr run` on a local simulation SuperLink, and cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fedinterest.simulations.experiment import shared_encodings
from fedinterest.common.config import ConfigError
from fedinterest.common.model.prefix import CACHE_ENV
from fedinterest.simulations.flwr_run import simulation_config, simulation_devices
from fedinterest.simulations.runner import simulated_node_config

pytestmark = pytest.mark.long(minutes=1)  # of real processes, on 2 cores: scheduled first (conftest)

SMALL = ["--backbone", "tiny", "--shops", "3", "--rounds", "2", "--max-train-per-user", "1", "--max-steps", "2",
         "--batch-size", "16", "--max-length", "32", "--eval-per-user", "1", "--central-test", "40",
         "--reference-rounds", "0", "--seed", "5"]
DEPRECATED = "run_simulation` function is deprecated"


def fedinterest(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedinterest", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def processes_with(marker: str) -> list[str]:
    """Live processes whose environment holds ``marker`` (every process a run started inherits it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if marker.encode() in environ:
            found.append(f"{entry}: {command[:160]}")
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_simulate_runs_flwr_run_and_leaves_no_process_behind(tmp_path):
    data = tmp_path / "shops"
    made = fedinterest("synth", "--out", str(data), "--shops", "3", "--users", "300", "--days", "20", "--seed", "5")
    assert made.returncode == 0, made.stderr
    marker = f"fedinterest-test-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["FEDINTEREST_TEST_MARKER"] = marker
    env[CACHE_ENV] = str(tmp_path / "encodings")  # what simulate sets for its shops on GPUs
    out = tmp_path / "sim"

    result = fedinterest("simulate", *SMALL, "--lora-layers", "top1", "--data", str(data), "--out", str(out),
                         env=env)

    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "[round 2]" in result.stdout and "exported the global adapter" in result.stdout
    assert DEPRECATED not in result.stdout + result.stderr
    assert "INFO :" not in result.stdout  # Flower's own log lines stay in the run's log
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"] == 2 and [h["round"] for h in report["history"]] == [1, 2]
    assert (Path(report["export"]) / "adapter" / "adapter_model.safetensors").is_file()
    nodes = json.loads((out / "federation" / "sim_nodes.json").read_text())
    assert sorted(nodes) == ["0", "1", "2"] and all(Path(n["state-dir"]).is_absolute() for n in nodes.values())
    assert (out / "federation" / "logs" / "flwr-run.log").is_file()
    assert not (out / "federation" / "flower").exists()  # the run's app and FLWR_HOME are gone
    assert processes_with(marker) == []
    # the shops' processes (under Ray, below the SuperLink) got the run's environment: their frozen-prefix
    # encodings (training and test set of 3 shops) are in the shared cache beside the driver's test set
    assert len(list((tmp_path / "encodings").glob("*.pt"))) >= 4


def test_a_simulated_node_takes_its_node_config_from_sim_nodes(tmp_path):
    path = tmp_path / "sim_nodes.json"
    path.write_text(json.dumps({"0": {"data-path": "/d/0", "shop": "a", "epsilon": 8.0},
                                "1": {"data-path": "/d/1", "threads": 2}}))
    config = {"sim-nodes": str(path)}
    assert simulated_node_config(config, 1) == {"data-path": "/d/1", "threads": 2}
    with pytest.raises(ConfigError, match="holds only nodes"):
        simulated_node_config(config, 2)
    with pytest.raises(ConfigError, match="unreadable"):
        simulated_node_config({"sim-nodes": str(tmp_path / "missing.json")}, 0)


def test_the_simulation_config_sizes_ray_and_takes_whole_cpus_per_shop():
    config = simulation_config(5, 8, 2.0)
    assert config["num-supernodes"] == 5 and config["init-args-num-cpus"] == 8
    assert config["client-resources-num-cpus"] == 2 and isinstance(config["client-resources-num-cpus"], int)
    with pytest.raises(ConfigError, match="whole CPUs"):
        simulation_config(5, 8, 0.5)


def test_shops_share_gpus_in_fractions_and_a_missing_gpu_is_a_clear_error(tmp_path):
    assert simulation_devices("auto", None, 0) == ("cpu", 0, 0.0)
    assert simulation_devices("auto", None, 2) == ("cuda", 2, 0.125)
    assert simulation_devices("cuda", 0.25, 1) == ("cuda", 1, 0.25)
    assert simulation_devices("cpu", None, 4) == ("cpu", 0, 0.0)
    config = simulation_config(50, 16, 1.0, gpus=1, gpus_per_shop=0.125)
    assert config["client-resources-num-gpus"] == 0.125 and config["init-args-num-gpus"] == 1
    assert "init-args-num-gpus" not in simulation_config(5, 8, 2.0)  # Ray finds none to place on a CPU run
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        simulation_devices("cuda", None, 0)
    with pytest.raises(ConfigError, match="use --device cuda"):
        simulation_devices("cuda:1", None, 2)
    with pytest.raises(ConfigError, match="needs --device cuda"):
        simulation_devices("cpu", 0.5, 1)
    with pytest.raises(ConfigError, match="share of one GPU"):
        simulation_config(5, 8, 1.0, gpus=1, gpus_per_shop=2.0)
    # many GPU workers share the shops' encodings through the run's cache; one CPU worker keeps its own
    assert shared_encodings(tmp_path, 1) == {CACHE_ENV: str((tmp_path / "prefix-cache").resolve())}
    assert shared_encodings(tmp_path, 0) == {}
