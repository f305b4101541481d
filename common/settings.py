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
from .task import Catalogue, TemporalSplit, Taxonomy
from .task.priors import Priors


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
    eval_per_user: int = 0  # > 0: evaluate on at most this many test examples of each customer (keyed)
    evaluations: int = 1  # secure evaluations the run holds (each shop reserves budget for them)
    backbone: str = "minilm"
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: LocalTraining = field(default_factory=LocalTraining)

    def to_record_dict(self) -> dict:
        out = {"round": self.round, "rounds": self.rounds, "epsilon_cap": float(self.epsilon_cap),
               "eval_per_user": self.eval_per_user, "evaluations": self.evaluations, "backbone": self.backbone}
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
                epsilon_cap=float(record["epsilon_cap"]), eval_per_user=int(record["eval_per_user"]),
                evaluations=int(record["evaluations"]),
                backbone=str(record["backbone"]), lora=LoraSettings(**lora), training=training,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's round config is malformed ({exc})") from None

    def __post_init__(self) -> None:
        if not 0 <= self.evaluations <= self.rounds:
            raise ConfigError(f"the server's round config announces {self.evaluations} evaluations in "
                              f"{self.rounds} rounds (at most one per round)")


@dataclass(frozen=True)
class TaskSpec:
    """The ``task`` record: the shared label space and the platform-wide split.

    ``label_space`` says where the taxonomy came from: ``published`` (a catalogue file the
    platform ships) or ``dp-top-k`` (the top K of the shops' noised, securely summed engagement).
    """

    taxonomy: Taxonomy
    split: TemporalSplit
    config: TaskConfig
    label_space: str = "published"
    priors: Priors | None = None  # the platform statistics the scorer uses (None: uniform)

    def to_record_dict(self) -> dict:
        out = {"taxonomy.categories": list(self.taxonomy.categories), "taxonomy.names": list(self.taxonomy.names),
               **_split_and_config_record(self.split, self.config)}
        if self.priors is not None:
            out["priors.popularity"] = [float(x) for x in self.priors.popularity]
            out["priors.transition"] = [float(x) for x in self.priors.transition.ravel()]
            if self.priors.counts is not None:
                out["priors.counts"] = [float(x) for x in self.priors.counts.ravel()]
        return out

    @classmethod
    def from_record_dict(cls, record: dict) -> "TaskSpec":
        try:
            taxonomy = Taxonomy(tuple(record["taxonomy.categories"]), tuple(record["taxonomy.names"]))
            split, config = _split_and_config(record)
            priors = None
            if "priors.popularity" in record:
                priors = Priors.from_dict({"popularity": record["priors.popularity"],
                                           "transition": record["priors.transition"],
                                           "counts": record.get("priors.counts")})
                if len(priors.popularity) != taxonomy.n_classes:
                    raise ValueError(f"priors over {len(priors.popularity)} classes, taxonomy of {taxonomy.n_classes}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's task record is malformed ({exc})") from None
        return cls(taxonomy, split, config, priors=priors)

    def with_priors(self, priors: Priors) -> "TaskSpec":
        return TaskSpec(self.taxonomy, self.split, self.config, self.label_space, priors)

    def fingerprint(self) -> str:
        return _fingerprint(self.to_record_dict())


@dataclass(frozen=True)
class PendingTask:
    """A task whose label space is still to be chosen privately from ``catalogue``.

    Its record is the ``task`` record of the ``query`` that asks shops for their noised
    engagement per catalogue category in the training period.
    """

    catalogue: Catalogue
    split: TemporalSplit
    config: TaskConfig

    def with_taxonomy(self, taxonomy: Taxonomy) -> TaskSpec:
        return TaskSpec(taxonomy, self.split, self.config, label_space="dp-top-k")

    def to_record_dict(self) -> dict:
        return {"catalogue.categories": list(self.catalogue.categories),
                "catalogue.names": list(self.catalogue.names), **_split_and_config_record(self.split, self.config)}

    @classmethod
    def from_record_dict(cls, record: dict) -> "PendingTask":
        try:
            catalogue = Catalogue(tuple(record["catalogue.categories"]), tuple(record["catalogue.names"]))
            split, config = _split_and_config(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the server's statistics request is malformed ({exc})") from None
        return cls(catalogue, split, config)

    def fingerprint(self) -> str:
        return _fingerprint(self.to_record_dict())


def _split_and_config_record(split: TemporalSplit, config: TaskConfig) -> dict:
    return {**{f"split.{k}": v for k, v in split.to_dict().items()},
            **{f"task.{k}": v for k, v in config.to_dict().items()}}


def _split_and_config(record: dict) -> tuple[TemporalSplit, TaskConfig]:
    split = TemporalSplit(**{k[6:]: int(v) for k, v in record.items() if k.startswith("split.")})
    config = TaskConfig.from_dict({k[5:]: v for k, v in record.items() if k.startswith("task.")})
    return split, config


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
