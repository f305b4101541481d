"""The federation's settings as the server sends them to every shop (in ``config`` and ``task``).

These are platform-wide and public: model and training hyperparameters, the taxonomy (catalogue
data), the split times and task settings. A shop's privacy budget is *not* here: it comes from
the shop's own node configuration, and the server's ``epsilon_cap`` can only lower it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from .config import ConfigError, TaskConfig
from .model import LoraSettings
from .task import TemporalSplit, Taxonomy


@dataclass(frozen=True)
class LocalTraining:
    """What each shop runs per round (``client.training.TrainConfig`` fields)."""

    batch_size: int = 32
    physical_batch_size: int = 32
    learning_rate: float = 5e-3
    epochs: float = 1.0
    max_steps: int = 0  # 0: no cap
    max_grad_norm: float = 1.0
    max_length: int = 128


@dataclass(frozen=True)
class RoundConfig:
    """The ``config`` record of a ``train`` or ``evaluate`` message.

    It holds no seed: a shop's DP noise and SecAgg+ randomness are the shop's own (a server that
    chose them could subtract the noise); reproducible simulations seed shops via node config.
    """

    round: int
    rounds: int
    epsilon_cap: float = 0.0  # > 0: the server asks shops to stay below it (it can only lower)
    eval_examples: int = 0  # > 0: evaluate on at most this many test examples per shop
    backbone: str = "minilm"
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: LocalTraining = field(default_factory=LocalTraining)

    def to_record_dict(self) -> dict:
        out = {"round": self.round, "rounds": self.rounds, "epsilon_cap": float(self.epsilon_cap),
               "eval_examples": self.eval_examples, "backbone": self.backbone}
        lora = self.lora.to_dict()
        lora["layers"] = list(lora["layers"]) if lora["layers"] is not None else []
        out.update({f"lora.{k}": v for k, v in lora.items()})
        out.update({f"train.{k}": v for k, v in asdict(self.training).items()})
        return out

    @classmethod
    def from_record_dict(cls, record: dict) -> "RoundConfig":
        try:
            lora = {k[5:]: v for k, v in record.items() if k.startswith("lora.")}
            lora["layers"] = tuple(lora["layers"]) or None
            lora["targets"] = tuple(lora["targets"])
            training = LocalTraining(**{k[6:]: v for k, v in record.items() if k.startswith("train.")})
            return cls(
                round=int(record["round"]), rounds=int(record["rounds"]),
                epsilon_cap=float(record["epsilon_cap"]), eval_examples=int(record["eval_examples"]),
                backbone=str(record["backbone"]), lora=LoraSettings(**lora), training=training,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's round config is malformed ({exc})") from None


@dataclass(frozen=True)
class TaskSpec:
    """The ``task`` record: the shared label space and the platform-wide split."""

    taxonomy: Taxonomy
    split: TemporalSplit
    config: TaskConfig

    def to_record_dict(self) -> dict:
        out = {"taxonomy.categories": list(self.taxonomy.categories), "taxonomy.names": list(self.taxonomy.names)}
        out.update({f"split.{k}": v for k, v in self.split.to_dict().items()})
        out.update({f"task.{k}": v for k, v in self.config.to_dict().items()})
        return out

    @classmethod
    def from_record_dict(cls, record: dict) -> "TaskSpec":
        try:
            taxonomy = Taxonomy(tuple(record["taxonomy.categories"]), tuple(record["taxonomy.names"]))
            split = TemporalSplit(**{k[6:]: int(v) for k, v in record.items() if k.startswith("split.")})
            config = TaskConfig.from_dict({k[5:]: v for k, v in record.items() if k.startswith("task.")})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's task record is malformed ({exc})") from None
        return cls(taxonomy, split, config)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_record_dict(), sort_keys=True).encode()).hexdigest()
