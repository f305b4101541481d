"""`fedinterest simulate` runs the federation with `flwr run` on a local simulation SuperLink, and cleans up.

The whole run (report, export, no process left behind, the shared encodings) is checked on the
uninterrupted run of ``test_resume.py``, which needs one anyway; here, the pieces.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from fedinterest.common.config import ConfigError
from fedinterest.common.model.prefix import CACHE_ENV
from fedinterest.simulations.experiment import shared_encodings
from fedinterest.simulations.flwr_run import simulation_config, simulation_devices
from fedinterest.simulations.runner import simulated_node_config


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


def kill_processes_with(marker: str) -> None:
    """SIGKILL every live process whose environment holds ``marker``."""
    for process in processes_with(marker):
        try:
            os.kill(int(process.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


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
