"""Simulating the federation on one machine with Flower's simulation engine (Ray backend).

``prepare`` turns a dataset (the default synthetic shops, or any log plus a partitioning) into
per-shop node configurations, exactly what each merchant would pass to its SuperNode, and the
platform's task: the split (calendar dates) and either a published taxonomy or the catalogue
(every category of the data's items) that the federation chooses its label space from, privately.
``simulations.flwr_run.run_federation_process`` runs them the supported way (``flwr run`` on a
local simulation SuperLink; ``simulate`` does); ``run_federation`` is the in-process test harness
(Flower's simulation engine in this process) for tests that hook into the server and the clients.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedinterest.common.atomic import atomic_write_text
from fedinterest.common.config import ConfigError, TaskConfig
from fedinterest.common.data import EventTable, LoadOptions, load_events
from fedinterest.common.data.load import MANIFEST
from fedinterest.common.settings import PendingTask, TaskSpec
from fedinterest.common.task import Catalogue, TemporalSplit, Taxonomy, default_split, public_split

from .identities import simulation_roster
from .partition import partition_events
from .synthetic import SynthConfig, write_synthetic

NodeConfigs = dict[int, dict]
#: Each simulated shop's ledger home, inside its state directory in the run folder: simulated shops are
#: new shops, so their ledgers start fresh there, never in the machine's ``$FEDINTEREST_HOME``.
SIMULATED_LEDGER_HOME = "ledger-home"
LEDGERS_NOTE = ("ledgers: simulated shops, each with a fresh ledger home in its run folder "
                "(shops/<shop>/state/ledger-home), not the machine's $FEDINTEREST_HOME")


@dataclass
class Prepared:
    table: EventTable  # pooled events (the simulation's view; no server sees them)
    shops: list[str]
    node_configs: NodeConfigs  # partition id -> node config
    task: TaskSpec | PendingTask  # pending: the federation chooses the label space privately
    data: Path
    roster: Path | None = None  # the shops' identity keys, pinned by every simulated shop


def prepare(
    out: Path,
    *,
    data: str | None = None,
    data_format: str | None = None,
    shops: int = 5,
    partition: str = "auto",
    alpha: float = 0.5,
    seed: int = 0,
    epsilon: float | None = 8.0,
    privacy: dict | None = None,
    node_settings: dict | None = None,
    taxonomy: Taxonomy | None = None,
    max_train_per_user: int | None = None,
    threads: int = 1,
    task_config: TaskConfig | None = None,
    synth: SynthConfig | None = None,
    fresh: bool = False,
    catalogue: Catalogue | None = None,
) -> Prepared:
    """Data, shops and node configs under ``out``.

    ``privacy``: node-config privacy keys every shop gets (``privacy-unit``, ``delta``, ``accountant``).
    ``node_settings``: other node-config keys every shop gets (``device``, ``bf16``, ``dp-engine``).
    ``taxonomy``: a published label space; without it the federation chooses one privately.
    ``catalogue``: the platform's published categories (default: the dataset's own catalogue, if it has one).
    ``fresh``: the simulated shops start with empty state (ledgers) instead of continuing the ones
    an earlier simulation in ``out`` left: a new simulation is new shops.
    """
    out.mkdir(parents=True, exist_ok=True)
    if fresh and (out / "shops").is_dir():
        import shutil

        for state in sorted((out / "shops").glob("*/state")):
            shutil.rmtree(state)
    if data is None:
        source = out / "data"
        config = synth or SynthConfig(shops=shops, seed=seed)
        if not (source / MANIFEST).is_file() or synth_config_of(source) != config.__dict__:
            write_synthetic(source, config)
    else:
        source = Path(data)
    table = load_events(source, LoadOptions(format=data_format))
    parts = partition_events(table, shops=shops, method=partition, alpha=alpha, seed=seed)
    if len(parts) < 3:
        raise ConfigError(f"{len(parts)} shops; secure aggregation needs at least 3")
    config = task_config or TaskConfig()
    split = public_split(table, config) if epsilon is not None else default_split(table, config)
    natural = table.has_merchants and (source / MANIFEST).is_file() and partition in ("auto", "natural")
    node_configs: NodeConfigs = {}
    for pid, name in enumerate(sorted(parts)):
        shop_dir = out / "shops" / name
        if natural:
            node = {"data-path": str(source), "shop": name}
        else:
            node = {"data-path": str(write_shop(parts[name], shop_dir / "data", name))}
        node["state-dir"] = str(shop_dir / "state")
        node["ledger-home"] = str(shop_dir / "state" / SIMULATED_LEDGER_HOME)  # never the machine's own ledgers
        if epsilon is None:
            node["non-private"] = True
        else:
            node["epsilon"] = float(epsilon)
            node.update(privacy or {})
        if max_train_per_user:
            node["max-train-per-user"] = int(max_train_per_user)
        node["threads"] = int(threads)
        node.update(node_settings or {})
        node["seed"] = node_seed(int(seed), pid)  # simulated shops are reproducible; real ones use the CSPRNG
        node_configs[pid] = node
    roster = simulation_roster(out, {name: out / "shops" / name / "state" for name in parts})
    for node in node_configs.values():
        node["roster"] = str(roster)
    if taxonomy is not None:
        spec = TaskSpec(taxonomy, split, config)
    else:
        catalogue = catalogue or Catalogue.public(table)
        if catalogue is None:
            catalogue = (Catalogue.observed(table) if epsilon is None else
                         pooled_partition_selection(table, parts, node_configs, split, config, seed))
        spec = PendingTask(catalogue, split, config)
    return Prepared(table, sorted(parts), node_configs, spec, source, roster)


def pooled_partition_selection(table: EventTable, parts: dict[str, EventTable], node_configs: NodeConfigs,
                               split: TemporalSplit, config: TaskConfig, seed: int) -> Catalogue:
    """The catalogue of a log that has none: a DP partition selection over the pooled log, charged to every shop.

    A deployed platform publishes its category list; a simulation of a log without one stands in for
    it with the categories whose pooled, noised engagement passes a threshold calibrated to δ
    (``client.statistics.release_partition_selection``). Every customer is in one shop, so each
    shop's ledger records the release at its own terms, before anything else.
    """
    from fedinterest.client.ledger import shop_ledger, terms_for
    from fedinterest.client.node import NodeSettings
    from fedinterest.client.statistics import (
        PARTITION_DELTA_SHARE, STATISTICS_SHARES, gaussian, partition_counts, partition_threshold, release_noise,
        sensitivity,
    )
    from fedinterest.common import wire
    from fedinterest.common.task import count_units

    sigma, spend = 0.0, 1.0
    for pid, name in enumerate(sorted(parts)):
        node = NodeSettings.from_node_config({**node_configs[pid], "partition-id": pid})
        ledger = shop_ledger(node.state_dir, parts[name], node.ledger_home, node.privacy.epsilon)
        terms = terms_for(ledger, node.privacy, count_units(parts[name], config, split, node.privacy.unit))
        shop_sigma = release_noise(node.privacy.budget(), STATISTICS_SHARES["engagement"], terms)
        decision = ledger.reserve("statistics", [(shop_sigma, 1.0, 1)], node.privacy.budget(),
                                  wire.STATISTICS_ROUNDS["engagement"], "partition-selection",
                                  delta=PARTITION_DELTA_SHARE * terms.delta)
        if not decision.allowed:
            raise ConfigError(f"shop {name}: cannot pay for the catalogue's partition selection: {decision.reason}")
        sigma = max(sigma, shop_sigma * sensitivity(terms.unit))  # the noisiest and the strictest of the shops
        spend = min(spend, PARTITION_DELTA_SHARE * terms.delta)
    categories, values = partition_counts(table, split.val_start)
    noisy = values + gaussian(len(values), sigma, seed, "pooled-partition-selection")
    chosen = tuple(c for c, v in zip(categories, noisy) if v > partition_threshold(sigma, spend))
    if not chosen:
        raise ConfigError(f"{table.report.source}: no category passed the private selection; give a catalogue")
    return Catalogue.named(chosen, table.category_names)


def node_seed(seed: int, partition_id: int) -> int:
    """A simulated shop's own seed: a 62-bit hash of the run's seed and its partition, no two alike."""
    import numpy as np

    return int(np.random.SeedSequence([seed, partition_id]).generate_state(2, np.uint32).view(np.uint64)[0] >> 2)


def simulated_node_config(run_config: dict, partition_id: int) -> dict:
    """Node config of a ``flwr run`` simulation node: its entry in ``sim-nodes``, else its shop of ``sim-data``.

    ``sim-nodes`` is the JSON file ``{partition id: node config}`` that ``simulate`` writes (its
    shops' full node configs). Only simulations take this path (all shops' data sits on one
    machine); a deployed SuperNode gets its node config from the merchant's own command line.
    """
    nodes = str(run_config.get("sim-nodes", "")).strip()
    if nodes:
        return sim_nodes_entry(Path(nodes), partition_id)
    data = Path(str(run_config.get("sim-data", "data/synthetic")))
    manifest = data / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"simulation node {partition_id}: no node config and no dataset at sim-data={data}; "
                          "run `fedinterest synth --out data/synthetic` or start SuperNodes with --node-config")
    shops = sorted(json.loads(manifest.read_text())["shops"])
    if partition_id >= len(shops):
        raise ConfigError(f"simulation node {partition_id}: {data} has only {len(shops)} shops")
    name = shops[partition_id]
    out = Path(str(run_config.get("out-dir", "runs/federation")))
    roster = simulation_roster(out, {shop: out / "shops" / shop / "state" for shop in shops})
    state = out / "shops" / name / "state"
    return {"data-path": str(data), "shop": name, "state-dir": str(state),
            "ledger-home": str(state / SIMULATED_LEDGER_HOME), "roster": str(roster)}


def sim_nodes_entry(path: Path, partition_id: int) -> dict:
    """The node config of simulation node ``partition_id`` in the ``sim-nodes`` file ``path``."""
    try:
        nodes = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"simulation node {partition_id}: sim-nodes={path} is unreadable ({exc})") from None
    if str(partition_id) not in nodes:
        raise ConfigError(f"simulation node {partition_id}: sim-nodes={path} holds only nodes {sorted(nodes)}; "
                          "run as many simulated SuperNodes as it lists")
    return dict(nodes[str(partition_id)])


def synth_config_of(directory: Path) -> dict | None:
    """The ``SynthConfig`` (as a dict) that wrote the synthetic shops in ``directory``, if any."""
    truth = directory / "ground_truth.json"
    return json.loads(truth.read_text()).get("config") if truth.is_file() else None


def write_shop(table: EventTable, directory: Path, name: str) -> Path:
    """One shop's events as a dataset directory (canonical CSV + names + manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    frame = table.frame.copy()
    frame["action"] = frame["action"].map({0: "view", 1: "fav", 2: "cart", 3: "buy"})
    atomic_write_text(directory / "events.csv", frame[["user_id", "item_id", "category", "action", "timestamp"]]
                      .to_csv(index=False))
    names = "category_id,category_name\n" + "".join(
        f"{c},{n.replace(',', ' ')}\n" for c, n in table.category_names.items())
    atomic_write_text(directory / "categories.csv", names)
    manifest = {"format": "generic", "shops": {name: "events.csv"}, "category_names": "categories.csv"}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest))
    return directory


def node_config_mod(node_configs: NodeConfigs):
    """A ClientApp mod giving each simulated node the config a real SuperNode would be started with."""

    def mod(message, context, call_next):
        pid = int(context.node_config["partition-id"])
        context.node_config.update(node_configs[pid])
        return call_next(message, context)

    return mod


@dataclass
class SimulationOutcome:
    result: object = None  # server.federation.FederationResult
    errors: list[str] = field(default_factory=list)


def run_federation(
    prepared: Prepared,
    run_config: dict,
    *,
    client_mods: tuple = (),
    observe: Callable | None = None,
    on_round: Callable | None = None,
    progress: Callable[[str], None] = print,
    cpus: int | None = None,
    cpus_per_shop: float = 1.0,
) -> SimulationOutcome:
    """Run the ServerApp and ClientApps in this process under Flower's simulation engine; the server's result.

    A test harness: tests hook into the run in-process (``observe``, ``on_round``, ``client_mods``),
    so it drives Flower's simulation engine here (``in_process_engine``). ``simulate`` uses
    ``simulations.flwr_run.run_federation_process``, the supported way.
    """
    from flwr.serverapp import ServerApp

    from fedinterest.client.app import build_client_app
    from fedinterest.server.federation import Federation
    from fedinterest.server.settings import FederationSettings, save_task_spec

    spec_path = Path(run_config["out-dir"]) / "platform_task.json"  # the run's input; task_spec.json is its choice
    save_task_spec(prepared.task, spec_path)
    # every simulated shop is local: wait for all of them (nodes register one by one), unless told otherwise
    defaults = {"min-shops": len(prepared.node_configs)}
    if prepared.roster is not None:
        defaults["roster"] = str(prepared.roster)
    settings = FederationSettings.from_run_config({**defaults, **run_config, "task-spec": str(spec_path)})
    outcome = SimulationOutcome()
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        outcome.result = Federation(settings, observe=observe, progress=progress, on_round=on_round).start(grid)

    client_app = build_client_app(mods=(node_config_mod(prepared.node_configs), *client_mods))
    cpus = cpus or os.cpu_count() or 2
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default, without its warning
    backend = {
        "client_resources": {"num_cpus": cpus_per_shop, "num_gpus": 0.0},
        # "local": a Ray instance of its own, never a cluster that `ray start` left on this machine
        "init_args": {"address": "local", "num_cpus": cpus, "include_dashboard": False, "logging_level": "error",
                      "log_to_driver": True},
    }
    in_process_engine(server_app, client_app, len(prepared.node_configs), backend)
    if outcome.result is None:
        raise RuntimeError("the simulated federation did not finish; see the log above")
    return outcome


def in_process_engine(server_app, client_app, nodes: int, backend: dict) -> None:
    """Flower's simulation engine (Ray backend) running ``server_app`` and ``nodes`` ClientApps in this process.

    It is the engine behind Flower's ``run_simulation``, a wrapper that Flower 1.42 deprecates in
    favour of ``flwr run`` (which runs the apps in processes of its own, out of a test's reach). The
    engine itself is internal to Flower; pyproject pins flwr to 1.42.x, as for the SuperNode runtime.
    """
    from flwr.supercore.telemetry import EventType
    from flwr.simulation.run_simulation import _run_simulation

    _run_simulation(num_supernodes=nodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                    client_app=client_app, server_app=server_app, backend_name="ray", backend_config=backend)
