"""A shop node: its own settings (from Flower's ``node_config``) and its loaded state.

Everything that decides what a shop reveals is node-side: where its data and ledger live, its
privacy budget and δ. A merchant sets them when starting the SuperNode, e.g.::

    flower-supernode ... --node-config "data-path='/data/shop.csv' state-dir='/var/lib/fedinterest' epsilon=8"

The server's messages never carry them; its ``epsilon_cap`` can only lower the budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedinterest.common.config import ConfigError
from fedinterest.common.data import EventTable, LoadOptions, load_events
from fedinterest.common.settings import RoundConfig, TaskSpec

from fedinterest.common.model.backbone import DEFAULT_BACKBONE
from fedinterest.common.secagg.config import DEFAULT_COLLUDING_FRACTION

from .privacy import DP_ENGINES, PrivacyConfig

if TYPE_CHECKING:  # the trainer (torch, peft, Opacus) loads only in stages that train or evaluate
    from .shop import LocalShop
    from .training import TrainConfig

#: node_config keys a shop may set (Flower passes them as str/int/float/bool).
NODE_KEYS = {
    "data-path": "events file or dataset directory (required)",
    "data-format": "source format (default: detect)",
    "shop": "keep only this merchant_id from the data",
    "state-dir": "directory for this node's caches and the pointer to its privacy ledger (required)",
    "ledger-home": "home of this node's privacy ledgers, one per dataset (default $FEDINTEREST_HOME or ~/.fedinterest)",
    "raise-budget": "true: accept an epsilon above every budget recorded for this data (recorded in the ledger)",
    "reset-ledger": "a label for one reset of this data's privacy accounting (e.g. a date): recorded in the ledger the "
                    "first time a node starts with it, never repeated; only if no earlier release reached anyone",
    "epsilon": "privacy budget over the whole federation (default 8)",
    "non-private": "true: train without differential privacy (labelled reference runs only)",
    "delta": "δ (default 1e-5, the same for every shop; must be below 1/units)",
    "privacy-unit": "user (default: a customer's whole history) or example (one user at one time)",
    "accountant": "prv (default) or rdp",
    "max-train-per-user": "use at most this many training examples of each customer (a keyed selection that depends "
                          "on that customer alone; default: all)",
    "device": "cpu, cuda, ... (default: cuda if available)",
    "bf16": "true: bfloat16 autocast on GPU",
    "dp-engine": "per-example gradients: opacus (default: Opacus' hooks) or fast (one backward for LoRA; same "
                 "clipping, noise and accounting)",
    "threads": "torch CPU threads for this node",
    "roster": "the federation's roster of SecAgg identity keys, as this shop pinned it (required)",
    "identity-key": "this shop's Ed25519 identity key (default: <state-dir>/identity.key; `fedinterest keys new`)",
    "min-clients": "fewest shops in a secure sum this shop takes part in (default 3; the server can only raise it)",
    "min-degree": "least SecAgg+ neighbour count this shop accepts (default 2⌈log2 n⌉)",
    "colluding-fraction": "γ: this shop plans for ⌈γ × roster size⌉ shops colluding with the server (default 0.2); "
                          "it refuses any round whose threshold they could reach",
    "backbone": "the backbone this node fine-tunes (default minilm on a deployed node); a round naming another is "
                "refused",
    "backbone-sha256": "sha256 of the backbone's weights file, checked before every load (minilm: built in)",
    "seed": "seed all of this node's randomness (simulations only: refused on a deployed SuperNode unless rehearsal)",
    "rehearsal": "true: this SuperNode rehearses the deployment on data without customers, so it may take `seed` "
                 "(reproducible secrets and noise: NOT private)",
}
#: Keys Flower itself puts into node_config (simulation).
FLOWER_KEYS = {"partition-id", "num-partitions"}
#: Set by a deployed node's task runner (``deploy.node_runner``): no key of the node config makes it a simulation.
DEPLOYED_ENV = "FEDINTEREST_DEPLOYED_NODE"


@dataclass(frozen=True)
class NodeSettings:
    data_path: str
    state_dir: str
    privacy: PrivacyConfig
    data_format: str | None = None
    shop: str | None = None
    max_train_per_user: int | None = None
    device: str = "auto"
    bf16: bool = False
    dp_engine: str = "opacus"
    threads: int | None = None
    seed: int | None = None
    roster: str | None = None
    identity_key: str | None = None
    min_clients: int = 3
    min_degree: int | None = None
    colluding_fraction: float = DEFAULT_COLLUDING_FRACTION
    backbone: str | None = None  # None: a simulation node, which follows the run's backbone
    backbone_sha256: str | None = None
    ledger_home: str | None = None  # None: $FEDINTEREST_HOME, else ~/.fedinterest
    raise_budget: bool = False
    reset_ledger: str | None = None  # a reset's label: recorded once

    @classmethod
    def from_node_config(cls, config: dict) -> "NodeSettings":
        unknown = set(config) - set(NODE_KEYS) - FLOWER_KEYS
        if unknown:
            raise ConfigError(f"node config: unknown key(s) {sorted(unknown)}; known: {sorted(NODE_KEYS)}")
        for key in ("data-path", "state-dir"):
            if not str(config.get(key, "")).strip():
                raise ConfigError(f"node config: '{key}' is required ({NODE_KEYS[key]})")
        non_private = _bool(config.get("non-private", False), "non-private")
        try:
            privacy = PrivacyConfig(
                epsilon=None if non_private else float(config.get("epsilon", 8.0)),
                delta=float(config["delta"]) if "delta" in config else None,
                unit=str(config.get("privacy-unit", PrivacyConfig.unit)),
                accountant=str(config.get("accountant", PrivacyConfig.accountant)),
            )
            max_train = int(config["max-train-per-user"]) if "max-train-per-user" in config else None
            if max_train is not None and max_train < 1:
                raise ValueError(f"max-train-per-user must be >= 1, got {max_train}")
            threads = int(config["threads"]) if "threads" in config else None
            seed = int(config["seed"]) if "seed" in config else None
            min_clients = int(config.get("min-clients", 3))
            min_degree = int(config["min-degree"]) if "min-degree" in config else None
            colluding = float(config.get("colluding-fraction", DEFAULT_COLLUDING_FRACTION))
        except ValueError as exc:
            raise ConfigError(f"node config: {exc}") from None
        rehearsal = _bool(config.get("rehearsal", False), "rehearsal")
        simulated = "partition-id" in config and not os.environ.get(DEPLOYED_ENV)
        if seed is not None and not simulated and not rehearsal:
            raise ConfigError("node config: 'seed' makes a shop's secrets and DP noise reproducible, so it is only "
                              "for simulations (Flower's simulation engine) and rehearsals without customers' data "
                              "(rehearsal=true); remove it from this SuperNode's config")
        return cls(
            data_path=str(config["data-path"]),
            state_dir=str(config["state-dir"]),
            privacy=privacy,
            data_format=str(config["data-format"]) if config.get("data-format") else None,
            shop=str(config["shop"]) if config.get("shop") else None,
            max_train_per_user=max_train,
            device=str(config.get("device", "auto")),
            bf16=_bool(config.get("bf16", False), "bf16"),
            dp_engine=_choice(config, "dp-engine", DP_ENGINES),
            threads=threads,
            seed=seed,
            roster=str(config["roster"]) if config.get("roster") else None,
            identity_key=str(config["identity-key"]) if config.get("identity-key") else None,
            min_clients=min_clients,
            min_degree=min_degree,
            colluding_fraction=colluding,
            backbone=str(config["backbone"]) if config.get("backbone") else
            (None if "partition-id" in config else DEFAULT_BACKBONE),
            backbone_sha256=str(config["backbone-sha256"]).lower() if config.get("backbone-sha256") else None,
            ledger_home=str(config["ledger-home"]) if config.get("ledger-home") else None,
            raise_budget=_bool(config.get("raise-budget", False), "raise-budget"),
            reset_ledger=_reset_label(config.get("reset-ledger")),
        )

    def secagg_parties(self):
        """``(identity, roster, policy)`` of this shop's secure rounds, from its own files and floors."""
        from fedinterest.common.secagg import Identity, Roster, SecAggPolicy
        from fedinterest.common.secagg.identity import IDENTITY_FILE

        if not self.roster:
            raise ConfigError("node config: 'roster' is required: the federation's roster of SecAgg identity keys "
                              "(compare its fingerprint with the other shops before joining)")
        key = Path(self.identity_key) if self.identity_key else Path(self.state_dir) / IDENTITY_FILE
        if not key.is_file():
            raise ConfigError(f"node config: no identity key at {key}; make one with "
                              f"`fedinterest keys new --state-dir {self.state_dir}` and send its public key to the "
                              "platform for the roster")
        return Identity.load(key), Roster.load(self.roster), SecAggPolicy(
            min_clients=self.min_clients, min_degree=self.min_degree, colluding_fraction=self.colluding_fraction)

    def check_backbone(self, requested: str) -> None:
        """Refuse a round naming a backbone other than this node's, or whose weights differ from the pinned hash.

        The server names the backbone in every round; a deployed node loads only its own (node config
        ``backbone``, default minilm), verified by hash, never a directory or hub id the server chose.
        """
        from fedinterest.common.model.backbone import MINILM_SHA256, resolve_backbone, weights_sha256

        if self.backbone is None:  # a simulation node: all shops' data and the server share one machine
            return
        if requested != self.backbone:
            raise ConfigError(f"the server asks for backbone {requested!r}; this node fine-tunes its own "
                              f"{self.backbone!r} (node config 'backbone') and refuses any other")
        pinned = self.backbone_sha256 or (MINILM_SHA256 if self.backbone == DEFAULT_BACKBONE else None)
        if pinned is None:
            raise ConfigError(f"node config: backbone {self.backbone!r} needs 'backbone-sha256' (the sha256 of its "
                              "weights file; `fedinterest node start` pins it)")
        actual = weights_sha256(resolve_backbone(self.backbone))
        if actual != pinned:
            raise ConfigError(f"backbone {self.backbone!r}: its weights have sha256 {actual}, not the pinned {pinned}; "
                              "restore the files or pin the new hash deliberately")


def _choice(config: dict, key: str, choices: tuple[str, ...]) -> str:
    value = str(config.get(key, choices[0]))
    if value not in choices:
        raise ConfigError(f"node config: '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _reset_label(value) -> str | None:
    """``reset-ledger``'s label: a reset is recorded once per label (a boolean would reset at every start)."""
    if value is None or value is False or str(value).strip() == "":
        return None
    if value is True or str(value).lower() in ("true", "1", "yes"):
        raise ConfigError("node config: 'reset-ledger' takes a label for one reset (e.g. reset-ledger='2026-12-07'), "
                          "recorded once: `true` would reset the ledger at every start")
    return str(value)


def _bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"node config: '{key}' must be true or false, got {value!r}")


def train_config(round_config: RoundConfig, node: NodeSettings) -> TrainConfig:
    from .training import TrainConfig

    t = round_config.training
    return TrainConfig(
        batch_size=t.batch_size, physical_batch_size=t.physical_batch_size, learning_rate=t.learning_rate,
        epochs=t.epochs, max_steps=t.max_steps or None, max_grad_norm=t.max_grad_norm, max_length=t.max_length,
        bf16=node.bf16, device=node.device, dp_engine=node.dp_engine,
    )


_SHOPS: dict[tuple, LocalShop] = {}
_TABLES: dict[NodeSettings, EventTable] = {}


def load_table(node: NodeSettings) -> EventTable:
    """This node's events (its shop's only), read once per process."""
    if node not in _TABLES:
        table = load_events(node.data_path, LoadOptions(format=node.data_format, shop=node.shop or None))
        if node.shop:
            table = table.of_merchant(node.shop)
            if not len(table):
                raise ConfigError(f"node config: shop {node.shop!r} is not in {node.data_path}")
        _TABLES[node] = table
    return _TABLES[node]


def load_shop(node: NodeSettings, round_config: RoundConfig, task: TaskSpec) -> LocalShop:
    """This process's ``LocalShop`` for the node, built once per (settings, task) and reused.

    Views are only caches of data and model: the budget lives in the ledger file, which every
    view re-reads under a lock, so a server that varies the config gains nothing.
    """
    from .shop import LocalShop, ModelConfig, SharedModel

    model = ModelConfig(backbone=round_config.backbone, lora=round_config.lora)
    train = train_config(round_config, node)
    key = (node, model, train, task.fingerprint())
    if key not in _SHOPS:
        if node.threads:
            import torch

            torch.set_num_threads(node.threads)
        shared = SharedModel.get(model, task.taxonomy.class_names, node.device)
        _SHOPS[key] = LocalShop(
            load_table(node), state_dir=Path(node.state_dir), privacy=node.privacy, train=train, model=model,
            task=task.config, taxonomy=task.taxonomy, split=task.split,
            max_train_per_user=node.max_train_per_user, shared=shared,
            seed=node.seed, priors=task.priors, ledger_home=node.ledger_home, raise_budget=node.raise_budget,
            reset_ledger=node.reset_ledger or False,
        )
    return _SHOPS[key]
