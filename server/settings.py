"""The ServerApp's settings, read from the Flower run config (``[tool.flwr.app.config]``).

Keys are kebab-case, as Flower run configs are; every value has a default so ``flwr run .``
works out of the box, and ``--run-config "num-server-rounds=5 lr=0.01"`` overrides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, TaskConfig
from common.model import LoraSettings
from common.model.lora import parse_layers
from common.settings import LocalTraining, TaskSpec
from common.task import TemporalSplit, Taxonomy

DEFAULTS: dict[str, object] = {
    "num-server-rounds": 3,
    "min-shops": 3,
    "fraction-train": 1.0,
    "seed": -1,
    "epsilon-cap": 0.0,
    "eval-examples": 500,
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
    "secagg-max-weight": 1000,
    "server-optimizer": "fedavg",
    "server-lr": 1.0,
    "round-timeout": 3600.0,
    "task-spec": "",
    "sim-data": "data/synthetic",
    "out-dir": "runs/federation",
    "resume": False,
    "top-k": 50,
}

#: Keys that may change between a run and its resumption.
RESUMABLE = {"resume", "round-timeout", "out-dir"}


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
        if self["head-init"] not in ("names", "random"):
            raise ConfigError("run config: head-init must be names or random")
        self.lora  # noqa: B018 - validates
        self.training  # noqa: B018

    @property
    def rounds(self) -> int:
        return int(self["num-server-rounds"])

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

    @property
    def out_dir(self) -> Path:
        return Path(str(self["out-dir"]))

    def fingerprint_values(self) -> dict:
        """What must match for a checkpoint to be resumed."""
        return {k: v for k, v in self.values.items() if k not in RESUMABLE}

    def task_spec(self) -> TaskSpec:
        """The shared task: from ``task-spec`` (a JSON file), else built from ``sim-data``."""
        path = str(self["task-spec"]).strip()
        if path:
            return load_task_spec(Path(path))
        from common.data import load_events
        from common.task import prepare_task

        data = Path(str(self["sim-data"]))
        if not data.exists():
            raise ConfigError(f"run config: neither task-spec nor sim-data ({data}) is available; "
                              "write one with `fedinterest simulate` or pass task-spec=PATH")
        task = prepare_task(load_events(data), TaskConfig(top_k=int(self["top-k"])))
        return TaskSpec(task.taxonomy, task.split, task.config)


def save_task_spec(spec: TaskSpec, path: Path) -> None:
    from common.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"taxonomy": spec.taxonomy.to_dict(), "split": spec.split.to_dict(),
                                        "task": spec.config.to_dict()}, indent=1))


def load_task_spec(path: Path) -> TaskSpec:
    try:
        data = json.loads(path.read_text())
        return TaskSpec(Taxonomy.from_dict(data["taxonomy"], str(path)), TemporalSplit(**data["split"]),
                        TaskConfig.from_dict(data["task"]))
    except FileNotFoundError:
        raise ConfigError(f"task-spec {path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"task-spec {path}: malformed ({exc}); it needs taxonomy, split and task") from None

