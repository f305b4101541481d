"""The ServerApp's settings, read from the Flower run config (``[tool.flwr.app.config]``).

Keys are kebab-case, as Flower run configs are; every value has a default so ``flwr run .``
works out of the box, and ``--run-config "num-server-rounds=5 lr=0.01"`` overrides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedinterest.common.config import ConfigError, TaskConfig
from fedinterest.common.model import LoraSettings
from fedinterest.common.model.lora import parse_layers
from fedinterest.common.settings import LocalTraining, PendingTask, TaskSpec
from fedinterest.common.task import Catalogue, TemporalSplit, Taxonomy
from fedinterest.common.task.priors import Priors

DEFAULTS: dict[str, object] = {
    "num-server-rounds": 3,
    "min-shops": 3,
    "fraction-train": 1.0,
    "seed": -1,
    "epsilon-cap": 0.0,
    "eval-per-user": 1,
    "eval-every": 0,
    "backbone": "minilm",
    "lora-rank": 8,
    "lora-alpha": 16,
    "lora-layers": "",
    "head-init": "names",
    "plain-lora": False,
    "batch-size": 32,
    "physical-batch-size": 32,
    "lr": 5e-3,
    "local-epochs": 1.0,
    "max-steps": 0,
    "clip": 1.0,
    "max-length": 128,
    "secagg-clip": 0.5,
    "secagg-norm": 0.0,
    "secagg-max-weight": 1,
    "colluding-fraction": 0.2,
    "max-shop-customers": 10_000,
    "server-optimizer": "fedavg",
    "server-lr": 1.0,
    "round-timeout": 3600.0,
    "task-spec": "",
    "sim-data": "data/synthetic",
    "sim-nodes": "",
    "out-dir": "runs/federation",
    "resume": False,
    "top-k": 0,
    "roster": "",
    "message-log": "",
}

#: Keys that may change between a run and its resumption.
RESUMABLE = {"resume", "round-timeout", "out-dir", "roster", "message-log"}


@dataclass(frozen=True)
class FederationSettings:
    values: dict = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FederationSettings":
        unknown = set(run_config) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"run config: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        values = {**DEFAULTS, **run_config}
        settings = cls(values)
        settings.validate()
        return settings

    def __getitem__(self, key: str):
        return self.values[key]

    def validate(self) -> None:
        if int(self["num-server-rounds"]) < 1:
            raise ConfigError("run config: num-server-rounds must be >= 1")
        if int(self["min-shops"]) < 3:
            raise ConfigError("run config: min-shops must be >= 3 (secure aggregation needs three)")
        if not 0 < float(self["fraction-train"]) <= 1:
            raise ConfigError("run config: fraction-train must be in (0, 1]")
        if int(self["eval-every"]) < 0:
            raise ConfigError("run config: eval-every must be >= 0 (0: evaluate after the last round only)")
        if self["head-init"] not in ("names", "random"):
            raise ConfigError("run config: head-init must be names or random")
        if not 0 <= float(self["colluding-fraction"]) < 0.5:
            raise ConfigError("run config: colluding-fraction must be in [0, 0.5) (of the roster)")
        if float(self["secagg-norm"]) < 0:
            raise ConfigError("run config: secagg-norm must be >= 0 (0: no L2 bound beyond secagg-clip)")
        if int(self["max-shop-customers"]) < 1:
            raise ConfigError("run config: max-shop-customers must be >= 1 (the largest shop the platform expects)")
        self.lora  # noqa: B018 - validates
        self.training  # noqa: B018

    @property
    def rounds(self) -> int:
        return int(self["num-server-rounds"])

    def evaluates(self, server_round: int) -> bool:
        """Whether the shops evaluate after ``server_round``: every ``eval-every`` rounds and after the last."""
        every = int(self["eval-every"])
        return server_round == self.rounds or (every > 0 and server_round % every == 0)

    @property
    def evaluations(self) -> int:
        """How many evaluations the run holds (each shop reserves budget for them)."""
        return sum(self.evaluates(r) for r in range(1, self.rounds + 1))

    @property
    def seed(self) -> int:
        return int(self["seed"])

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(rank=int(self["lora-rank"]), alpha=int(self["lora-alpha"]),
                            ffa=not bool(self["plain-lora"]), layers=parse_layers(self["lora-layers"]),
                            seed=max(self.seed, 0))

    @property
    def training(self) -> LocalTraining:
        return LocalTraining(
            batch_size=int(self["batch-size"]), physical_batch_size=int(self["physical-batch-size"]),
            learning_rate=float(self["lr"]), epochs=float(self["local-epochs"]), max_steps=int(self["max-steps"]),
            max_grad_norm=float(self["clip"]), max_length=int(self["max-length"]),
        )

    def secagg(self, vector_length: int, shops: int, clip: float, max_weight: int = 1,
               norm: float | None = None) -> "SecAggConfig":
        """A round's SecAgg+ parameters: colluders planned from the roster (``colluding-fraction`` of it)."""
        from fedinterest.common.secagg import SecAggConfig, planned_colluders

        roster = self.roster
        members = len(roster) if roster is not None else shops
        return SecAggConfig(vector_length=vector_length, max_clients=max(shops, 3), clip=clip, max_weight=max_weight,
                            min_clients=3, colluders=planned_colluders(members, float(self["colluding-fraction"])),
                            norm_bound=norm or None)

    @property
    def roster(self):
        """The federation's roster (to exclude unlisted shops early), or None: each shop checks its own."""
        if not str(self["roster"]):
            return None
        from fedinterest.common.secagg import Roster

        return Roster.load(str(self["roster"]))

    @property
    def out_dir(self) -> Path:
        return Path(str(self["out-dir"]))

    def fingerprint_values(self) -> dict:
        """What must match for a checkpoint to be resumed."""
        return {k: v for k, v in self.values.items() if k not in RESUMABLE}

    def task_spec(self) -> "TaskSpec | PendingTask":
        """The shared task: from ``task-spec`` (a JSON file), else from ``sim-data``.

        Without a published taxonomy the label space is chosen privately at the start of the run
        (a ``PendingTask``: the catalogue, the split and the task settings).
        """
        path = str(self["task-spec"]).strip()
        if path:
            return load_task_spec(Path(path))
        from fedinterest.common.data import load_events
        from fedinterest.common.task import Catalogue, public_split

        data = Path(str(self["sim-data"]))
        if not data.exists():
            raise ConfigError(f"run config: neither task-spec nor sim-data ({data}) is available; "
                              "write one with `fedinterest simulate` or pass task-spec=PATH")
        table = load_events(data)
        config = TaskConfig(top_k=int(self["top-k"]))
        catalogue = Catalogue.public(table)
        if catalogue is None:
            raise ConfigError(f"run config: sim-data={data} brings no catalogue (its events are customers' data and "
                              "do not make one); use `fedinterest simulate`, which selects one privately, or pass "
                              "task-spec=PATH")
        return PendingTask(catalogue, public_split(table, config), config)


def save_task_spec(spec: "TaskSpec | PendingTask", path: Path, chosen_from: str = "") -> None:
    """The task as JSON: a published or chosen taxonomy, or the catalogue it is to be chosen from."""
    from fedinterest.common.atomic import atomic_write_text

    data: dict = {"split": spec.split.to_dict(), "task": spec.config.to_dict()}
    if isinstance(spec, TaskSpec):
        data.update(taxonomy=spec.taxonomy.to_dict(), label_space=spec.label_space)
        if spec.priors is not None:
            data["priors"] = spec.priors.to_dict()
    else:
        data.update(catalogue=spec.catalogue.to_dict())
    if chosen_from:
        data["chosen_from"] = chosen_from
    atomic_write_text(path, json.dumps(data, indent=1))


def load_task_spec(path: Path) -> "TaskSpec | PendingTask":
    try:
        data = json.loads(path.read_text())
        split, config = TemporalSplit(**data["split"]), TaskConfig.from_dict(data["task"])
        if "taxonomy" in data:
            priors = Priors.from_dict(data["priors"]) if data.get("priors") else None
            return TaskSpec(Taxonomy.from_dict(data["taxonomy"], str(path)), split, config,
                            str(data.get("label_space", "published")), priors)
        return PendingTask(Catalogue.from_dict(data["catalogue"]), split, config)
    except FileNotFoundError:
        raise ConfigError(f"task-spec {path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"task-spec {path}: malformed ({exc}); it needs split, task and a taxonomy "
                          "(published) or a catalogue (the label space is then chosen privately)") from None


def chosen_task(path: Path, spec: "TaskSpec | PendingTask") -> "TaskSpec | None":
    """The task (label space and priors) a run already completed from ``spec`` (saved in its out-dir), if any."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("chosen_from") != spec.fingerprint():
        return None
    spec = load_task_spec(path)
    return spec if isinstance(spec, TaskSpec) else None
