"""The ServerApp that ``flwr run .`` runs in simulation: the platform's federation over simulated shops.

On first use (no ``task-spec``, no ``sim-nodes`` and nothing at ``sim-data``) it writes the default
synthetic shops to ``sim-data``, as ``fedinterest synth`` would, so a fresh clone runs. Each
simulated SuperNode is then one shop of ``sim-data`` (``flower_client`` maps partition ids to
shops). A simulation the shops cannot fill (fewer SuperNodes than ``min-shops``, more SuperNodes
than shops) ends with one line saying what to run, before anything is trained.
"""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedinterest.common.config import ConfigError
from fedinterest.common.data.load import MANIFEST
from fedinterest.server.app import report, run_federation
from fedinterest.server.settings import FederationSettings

from .synthetic import SynthConfig, write_synthetic

#: How long the simulated SuperNodes may take to register (they all do, at once, at the start).
NODES_WAIT = 30.0

app = ServerApp()


def first_use(settings: FederationSettings) -> str | None:
    """Write the default synthetic shops to ``sim-data`` when the run has no data at all; what was done."""
    if str(settings["task-spec"]).strip() or str(settings["sim-nodes"]).strip():
        return None
    data = Path(str(settings["sim-data"]))
    if (data / MANIFEST).is_file():
        return None
    if data.exists() and any(data.iterdir()):
        raise ConfigError(f"sim-data={data.resolve()} holds no {MANIFEST}; point sim-data at a dataset directory "
                          "(`fedinterest synth --out DIR` writes one) or empty it")
    config = SynthConfig()
    write_synthetic(data, config)
    return f"first use: wrote {config.shops} synthetic shops to {data.resolve()} (sim-data)"


def simulated_shops(settings: FederationSettings) -> int | None:
    """How many shops the simulation's data holds (None when ``sim-nodes`` or ``task-spec`` decide)."""
    if str(settings["sim-nodes"]).strip():
        return len(json.loads(Path(str(settings["sim-nodes"])).read_text()))
    manifest = Path(str(settings["sim-data"])) / MANIFEST
    return len(json.loads(manifest.read_text())["shops"]) if manifest.is_file() else None


def check_nodes(nodes: int, shops: int | None, need: int) -> None:
    """One simulated SuperNode per shop: at least ``min-shops`` of them, no more than there are shops."""
    enough = shops if shops and shops >= need else need
    fix = f'run `flwr run . --federation-config "num-supernodes={enough} client-resources-num-cpus=1"`'
    if nodes < need:
        raise ConfigError(f"the simulation runs {nodes} SuperNodes and the federation needs at least {need} shops "
                          f"(min-shops); {fix}")
    if shops is not None and nodes > shops:
        raise ConfigError(f"the simulation runs {nodes} SuperNodes and sim-data holds {shops} shops, one per "
                          f"SuperNode; {fix}")


def registered_nodes(grid: Grid, need: int, wait: float = NODES_WAIT) -> int:
    """The simulated SuperNodes, once ``need`` have registered or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while len(nodes := list(grid.get_node_ids())) < need and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(nodes)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = FederationSettings.from_run_config(dict(context.run_config))
        if done := first_use(settings):
            log(INFO, "fedinterest: %s", done)
        need = int(settings["min-shops"])
        check_nodes(registered_nodes(grid, need), simulated_shops(settings), need)
        run_federation(grid, settings)
    except ConfigError as exc:
        report(exc)
