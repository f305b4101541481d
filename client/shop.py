"""One shop's local state across rounds: its examples, its model, its privacy ledger.

``LocalShop.train_round`` is the single code path for local training: the ClientApp calls it
for every federated round and ``fedinterest train-local`` calls it for a shop on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedinterest.common.config import ConfigError, TaskConfig
from fedinterest.common.data.schema import EventTable
from fedinterest.common.wire import adapter_digest
from fedinterest.common.metrics import evaluate
from fedinterest.common.model import (
    LoraSettings, build_model, get_adapter_state, load_tokenizer, resolve_backbone, resolve_device,
    set_adapter_state,
)
from fedinterest.common.model.head import init_head_from_names
from fedinterest.common.atomic import atomic_write_json, file_lock
from fedinterest.common.model.scorer import Priors, set_priors
from fedinterest.common.task.priors import SELECTION_THRESHOLD, denoise
from fedinterest.common.stats import label_flows, own_flow_corrections, transition_rows
from fedinterest.common.model.prefix import adapted_layers_start
from fedinterest.common.task import (
    Catalogue, ExampleSet, TaskData, TemporalSplit, Taxonomy, count_units, default_split, prepare_task, public_split,
)
from fedinterest.common.task.features import history_features
from fedinterest.common.task.selection import select_per_user
from fedinterest.common.text import encode_texts, render_examples

from .ledger import LedgerError, shop_ledger, terms_for
from .privacy import BudgetExhausted, PrivacyConfig, PrivacyTerms, plan_privacy
from .statistics import (
    EVALUATION_SHARE, StatisticsOutcome, release, release_category_engagement, release_label_flows,
    release_partition_selection, reserved_evaluations,
)
from .training import DPSettings, RoundStats, ShopDataset, TrainConfig, predict_proba, train_round


HEAD_INITS = ("names", "random")
EVALUATION = "evaluation"  # the statistics kind of a federated evaluation release
STATISTICS_LOCK = "statistics.lock"  # serialises check-release-save of the label space and priors


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "minilm"
    lora: LoraSettings = field(default_factory=LoraSettings)
    head_init: str = "names"  # the head starts from the class names' representations, or random

    def __post_init__(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"head init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")


@dataclass
class RoundOutcome:
    """What a round produced: a new adapter state, or a declined round with its reason."""

    declined: bool
    reason: str = ""
    code: str = ""  # why it was declined: "budget" or "no-data"
    state: "dict[str, np.ndarray] | None" = None
    num_examples: int = 0
    stats: RoundStats | None = None
    epsilon: float | None = None  # spent after this round (None: non-private)


def shop_dataset(examples: ExampleSet, names: dict[str, str], tokenizer, max_length: int) -> ShopDataset:
    """Render, tokenize, compute history features and wrap examples for training or prediction."""
    encoded = encode_texts(render_examples(examples, names), tokenizer, max_length)
    return ShopDataset(encoded.input_ids, encoded.lengths, examples.label, examples.user,
                       history_features(examples), examples.current)


class SharedModel:
    """The backbone + LoRA model a process trains; many shops can take turns on one instance.

    A shop loads the global adapter before it trains, so sharing is safe, and memory does not
    grow with the number of shops a worker serves. The initial head is a function of the
    backbone and the taxonomy's class names only, so every party builds the same one.
    """

    def __init__(self, config: ModelConfig, class_names: tuple[str, ...], device: str = "auto"):
        self.config, self.class_names, self.n_classes = config, tuple(class_names), len(class_names)
        self.device = resolve_device(device)
        backbone = resolve_backbone(config.backbone)
        self.tokenizer = load_tokenizer(backbone)
        self.model = build_model(backbone, self.n_classes, config.lora, self.device)
        if config.head_init == "names":
            init_head_from_names(self.model, self.tokenizer, self.class_names)
        self.prefix_start = adapted_layers_start(self.model)  # layers below carry no adapter
        self.priors: Priors | None = None  # the priors its scorer holds now (shops with one task share them)

    _instances: dict[tuple, "SharedModel"] = {}

    @classmethod
    def get(cls, config: ModelConfig, class_names: tuple[str, ...], device: str = "auto") -> "SharedModel":
        """The process-wide instance for these settings."""
        key = (config, tuple(class_names), str(resolve_device(device)))
        if key not in cls._instances:
            cls._instances[key] = cls(config, class_names, device)
        return cls._instances[key]

    def dataset(self, examples: ExampleSet, names: dict[str, str], max_length: int) -> ShopDataset:
        data = shop_dataset(examples, names, self.tokenizer, max_length)
        return data.with_prefix(self.model, self.prefix_start)


class LocalShop:
    """A shop's data, model and ledger. Nothing here leaves the shop but what rounds return."""

    def __init__(
        self,
        table: EventTable,
        *,
        state_dir: str | Path,
        privacy: PrivacyConfig,
        train: TrainConfig,
        model: ModelConfig,
        task: TaskConfig,
        taxonomy: Taxonomy | None = None,
        split: TemporalSplit | None = None,
        max_train_per_user: int | None = None,
        max_train_examples: int | None = None,
        max_test_examples: int | None = None,
        seed: int | None = None,
        shared: SharedModel | None = None,
        statistics_seed: int | None = None,
        priors: Priors | None = None,
        ledger_home: str | Path | None = None,
        reset_ledger: bool | str = False,
        raise_budget: bool = False,
    ):
        """``taxonomy=None``: a private shop chooses its label space by a DP top-K of its own
        engagement; ``priors=None``: it releases its own label flows for the scorer's priors. Both
        releases are charged to its ledger and kept in the state directory; a non-private reference
        computes them from the data. ``statistics_seed`` seeds their noise (simulations only).
        ``max_train_per_user``: each customer's training examples are capped at this many, the ones
        of lowest keyed rank (``common.task.selection``): which of a customer's examples are used
        depends on that customer alone. The key is ``seed``'s (simulations) or, on a private shop, a
        secret kept in its state directory, the same in every process. ``max_train_examples`` (a cap
        on the whole shop, which depends on every customer) and ``max_test_examples`` are for
        non-private references and local metrics only: a private shop refuses the first.
        The ledger is the data's (``client.ledger``), in ``ledger_home`` (default ``$FEDINTEREST_HOME``);
        ``reset_ledger`` records a reset, ``raise_budget`` a budget above every one recorded.
        """
        self.privacy, self.train_config, self.model_config = privacy, train, model
        self.state_dir = Path(state_dir)
        self.ledger = shop_ledger(self.state_dir, table, ledger_home, privacy.epsilon, raise_budget,
                                  reset_ledger) if privacy.private else None
        given = taxonomy is not None
        split = split or (public_split(table, task) if privacy.private else default_split(table, task))
        self.label_space = "given"
        if not given and privacy.private:
            taxonomy = self._private_taxonomy(table, task, split, statistics_seed)
            self.label_space = "dp-top-k"
        self.task: TaskData = prepare_task(table, task, taxonomy=taxonomy, split=split, require_examples=not given)
        if max_train_examples is not None and privacy.private:
            raise ConfigError("a private shop's training examples are capped per customer (max_train_per_user): a "
                              "cap on the whole shop would let every customer change which examples of the others "
                              "are used")
        # a non-private reference keeps no state: its selection needs no secret
        self.selection_key = selection_key(self.state_dir if privacy.private and seed is None else None, seed)
        rng = np.random.default_rng(np.frombuffer(self.selection_key, dtype=np.uint32))
        # `other` is never a hit, so it is never a training target either
        named = np.flatnonzero(self.task.train.label != self.task.taxonomy.other)
        named = named[select_per_user(self.task.train.subset(named), self.selection_key, max_train_per_user, "train")]
        train_index = named[_sample(len(named), max_train_examples, rng)]
        self.train_examples = self.task.train.subset(train_index)
        self.test_examples = self.task.test.subset(_sample(len(self.task.test), max_test_examples, rng))
        self.shared = shared or SharedModel(model, self.task.taxonomy.class_names, train.device)
        if self.shared.n_classes != self.task.taxonomy.n_classes:
            raise ConfigError(f"model has {self.shared.n_classes} classes, the taxonomy {self.task.taxonomy.n_classes}")
        self.model = self.shared.model
        self.priors = priors or self._own_priors(statistics_seed)
        self.activate()
        names = table.category_names
        self.names = names
        self.train_data = self._training_data(train_index, names, train.max_length)
        if self.priors.counts is not None:  # the priors hold this shop's own flows: leave each user out
            own = own_flow_corrections(self.task.train, len(self.priors.transition), self.priors.counts,
                                       history_features(self.task.train))
            self.train_data = self.train_data.with_own_corrections(own[0][train_index], own[1][train_index])
        self._test_sets: dict[int | None, tuple[ExampleSet, ShopDataset]] = {}
        self.n_users = int(len(np.unique(self.task.train.user)))

    def _training_data(self, index: np.ndarray, names: dict[str, str], max_length: int) -> ShopDataset:
        """The training examples at ``index``, encoded. With a shared prefix cache on, every training
        example is encoded once and the subset taken after: the encodings then serve any label
        space and subset (sweep points that differ in ε choose different ones)."""
        import os

        from fedinterest.common.model.prefix import CACHE_ENV

        if os.environ.get(CACHE_ENV) and self.shared.prefix_start > 0:
            return self.shared.dataset(self.task.train, names, max_length).subset(index)
        return self.shared.dataset(self.train_examples, names, max_length)

    def _private_taxonomy(self, table: EventTable, task: TaskConfig, split: TemporalSplit,
                          seed: int | None) -> Taxonomy:
        """The top-K categories by this shop's noised engagement (one statistics release, kept)."""
        size = f"top{task.top_k}" if task.top_k else f"cover{task.coverage:g}"
        path = self.state_dir / f"taxonomy-{size}.json"
        with file_lock(self.state_dir / STATISTICS_LOCK):  # a second process reuses this release
            return self._release_taxonomy(path, table, task, split, seed)

    def _release_taxonomy(self, path: Path, table: EventTable, task: TaskConfig, split: TemporalSplit,
                          seed: int | None) -> Taxonomy:
        if path.is_file():  # post-processing of a release the ledger already holds: free
            return Taxonomy.load(path)
        terms = terms_for(self.ledger, self.privacy, count_units(table, task, split, self.privacy.unit))
        catalogue = Catalogue.public(table)
        if catalogue is not None:  # the domain is public: only the engagement over it is a release
            outcome = release_category_engagement(table, catalogue, split.val_start, ledger=self.ledger, terms=terms,
                                                  budget=self.privacy.budget(), seed=seed)
        else:  # no catalogue came with the data: a DP partition selection of the domain, its δ in the ledger
            outcome, catalogue = release_partition_selection(table, split.val_start, ledger=self.ledger, terms=terms,
                                                             budget=self.privacy.budget(), seed=seed)
        if outcome.declined or catalogue is None:
            raise LedgerError(f"{self.ledger.path}: cannot choose the label space privately: "
                              f"{outcome.reason or 'no category passed the selection threshold'}")
        taxonomy = catalogue.top_k(denoise(outcome.vector, threshold=SELECTION_THRESHOLD), task.top_k,
                                   task.coverage, task.max_top_k)
        taxonomy.save(path)
        return taxonomy

    def _own_priors(self, seed: int | None) -> Priors:
        """Priors from this shop's own label flows: a DP release (kept), or exact when non-private."""
        rows = transition_rows(self.task.taxonomy.n_classes)
        train = self.task.train
        if not self.privacy.private:
            return Priors.from_flows(label_flows(train, rows))
        path = self.state_dir / f"priors-{_digest(self.task.taxonomy.to_dict())[:16]}.json"
        with file_lock(self.state_dir / STATISTICS_LOCK):  # a second process reuses this release
            return self._release_priors(path, rows, seed)

    def _release_priors(self, path: Path, rows: int, seed: int | None) -> Priors:
        train = self.task.train
        if path.is_file():  # post-processing of a release the ledger already holds: free
            return Priors.from_dict(json.loads(path.read_text()))
        outcome = release_label_flows(train, rows, ledger=self.ledger, terms=self.privacy_terms(),
                                      budget=self.privacy.budget(), seed=seed)
        if outcome.declined:
            raise LedgerError(f"{self.ledger.path}: cannot release the label flows for the priors: {outcome.reason}")
        priors = Priors.from_flows(outcome.vector)
        atomic_write_json(path, priors.to_dict())
        return priors

    # ------------------------------------------------------------------ adapter

    def activate(self) -> None:
        """Put this shop's platform priors into the (possibly shared) model."""
        if self.shared.priors is not self.priors:
            set_priors(self.model, self.priors)
            self.shared.priors = self.priors

    def adapter_state(self) -> "dict[str, np.ndarray]":
        return get_adapter_state(self.model)

    def load_adapter(self, state: "dict[str, np.ndarray]") -> None:
        set_adapter_state(self.model, state)

    # ------------------------------------------------------------------ privacy

    def privacy_terms(self) -> PrivacyTerms:
        """The unit, δ and accountant of this shop's releases: fixed in the ledger at the first one."""
        assert self.ledger is not None
        return terms_for(self.ledger, self.privacy, self.n_units)

    @property
    def n_units(self) -> int:
        """Privacy units (users or examples) in the shop's whole training period: δ is set below 1/n."""
        train = self.task.train
        return int(len(np.unique(train.user))) if self.privacy.unit == "user" else len(train)

    def privacy_settings(self, total_rounds: int, evaluations: int = 0) -> DPSettings:
        """This shop's DP-SGD schedule: planned on the first private round, fixed afterwards.

        σ is planned for the shop's whole budget over ``total_rounds`` rounds, after whatever the
        ledger already holds (the federated statistics) and the ``evaluations`` the run announces
        (those still to come are reserved). Every view and process reads the same plan.
        """
        assert self.ledger is not None
        terms = self.privacy_terms()
        budget = self.privacy.budget()

        def reserved(state) -> list:
            done = sum(1 for r in state.releases if r.kind == "statistics" and r.input_sha256.startswith(EVALUATION))
            return reserved_evaluations(budget, terms, evaluations, done)

        unit = terms.unit
        n_units = self.train_data.n_units(unit)
        rate = self.train_config.sample_rate(n_units)
        plan = self.ledger.fix_plan(lambda state: plan_privacy(
            epsilon=self.privacy.budget(),
            delta=state.accountant_delta,
            sample_rate=rate,
            steps_per_round=self.train_config.steps_per_round(n_units),
            rounds=total_rounds,
            max_grad_norm=self.train_config.max_grad_norm,
            accountant=terms.accountant,
            unit=unit,
            expected_batch_size=rate * n_units,
            prior=[*state.history, *reserved(state)],
        ))
        return DPSettings(plan.noise_multiplier, plan.max_grad_norm, plan.sample_rate, plan.steps_per_round, unit,
                          plan.expected_batch_size)

    # ------------------------------------------------------------------ rounds

    def train_round(
        self,
        global_state: "dict[str, np.ndarray] | None" = None,
        *,
        total_rounds: int = 1,
        server_round: int | None = None,
        server_epsilon: float | None = None,
        seed: int | None = None,
        replayable: bool = False,
        evaluations: int = 0,
    ) -> RoundOutcome:
        """Load ``global_state``, reserve the round in the ledger, train it, return the result.

        The round is written to the ledger before training starts; a round the ledger refuses
        is declined with its reason. ``replayable`` (a node whose randomness is seeded, i.e. a
        simulation): a round this shop already released, asked again from the same global
        adapter, is reproduced bit for bit; repeating a release reveals nothing new, so it is
        recorded as a replay without new privacy loss (a server resumed from a checkpoint).
        """
        self.activate()
        if global_state is not None:
            self.load_adapter(global_state)
        n = len(self.train_data)
        if n == 0:
            return RoundOutcome(True, reason="no training examples in the training period", code="no-data")
        if not self.privacy.private:
            stats = train_round(self.model, self.train_data, self.train_config, None, seed)
            return RoundOutcome(False, state=self.adapter_state(), num_examples=n, stats=stats)
        try:
            dp = self.privacy_settings(total_rounds, evaluations)
        except BudgetExhausted as exc:
            return RoundOutcome(True, reason=str(exc), code="budget", epsilon=self.ledger.spent)
        digest = adapter_digest(global_state) if global_state is not None else ""
        original = self.ledger.find_release(server_round, digest) if replayable and seed is not None else None
        if original is not None:
            self.ledger.record_replay(original)
            stats = train_round(self.model, self.train_data, self.train_config, dp, seed)
            return RoundOutcome(False, state=self.adapter_state(), num_examples=n, stats=stats,
                                epsilon=self.ledger.spent)
        budget = self.privacy.budget(server_epsilon)
        decision = self.ledger.reserve("dp-sgd", [(dp.noise_multiplier, dp.sample_rate, dp.steps)], budget,
                                       server_round, digest)
        if not decision.allowed:
            return RoundOutcome(True, reason=decision.reason, code="budget", epsilon=decision.epsilon_now)
        stats = train_round(self.model, self.train_data, self.train_config, dp, seed)
        return RoundOutcome(False, state=self.adapter_state(), num_examples=n, stats=stats,
                            epsilon=decision.epsilon_after)

    def test_set(self, per_user: int | None = None) -> tuple[ExampleSet, ShopDataset]:
        """The test examples, at most ``per_user`` of each customer (by the keyed rank), encoded once and kept.

        Which of a customer's examples are scored depends on that customer alone, so an evaluation
        release moves by at most one customer's bounded contribution when a customer is removed.
        """
        if per_user not in self._test_sets:
            examples = self.test_examples
            examples = examples.subset(select_per_user(examples, self.selection_key, per_user, EVALUATION))
            self._test_sets[per_user] = (examples, self.shared.dataset(examples, self.names,
                                                                        self.train_config.max_length))
        return self._test_sets[per_user]

    @property
    def test_data(self) -> ShopDataset:
        return self.test_set()[1]

    def evaluate(self, per_user: int | None = None) -> dict[str, float]:
        """Test metrics (and cross-entropy ``loss``) on the test examples, at most ``per_user`` of each customer."""
        examples, data = self.test_set(per_user)
        if not len(data):
            return {"n": 0.0, "n_migrating": 0.0}
        self.activate()
        probs = predict_proba(self.model, data, bf16=self.train_config.bf16)
        metrics = evaluate(probs, examples.label, examples.current, self.task.taxonomy.other)
        metrics["loss"] = float(-np.mean(np.log(np.maximum(probs[np.arange(len(probs)), examples.label], 1e-12))))
        return metrics


    def release_evaluation(self, adapter: "dict[str, np.ndarray]", *, server_round: int, evaluations: int,
                           per_user: int | None = None, seed: int | None = None) -> StatisticsOutcome:
        """This shop's noised evaluation counts of ``adapter`` (``common.evaluation``), or a decline.

        The release is reserved in the ledger before the test set is scored; its σ makes the
        ``evaluations`` the run announces cost ``EVALUATION_SHARE`` of the budget together. A
        non-private shop (a labelled reference run) answers exactly.
        """
        from fedinterest.common import wire
        from fedinterest.common.evaluation import example_counts, unit_sum

        examples, data = self.test_set(per_user)

        def compute() -> np.ndarray:
            self.activate()
            self.load_adapter(adapter)
            probs = predict_proba(self.model, data, bf16=self.train_config.bf16)
            rows = example_counts(probs, examples.label, examples.current, self.task.taxonomy.other)
            units = examples.user if self.privacy.unit == "user" else np.arange(len(examples))
            return unit_sum(rows, units)

        if not self.privacy.private:
            return StatisticsOutcome(False, vector=compute())
        return release(EVALUATION, compute, ledger=self.ledger, terms=self.privacy_terms(),
                       budget=self.privacy.budget(), share=EVALUATION_SHARE,
                       server_round=wire.EVALUATION_ROUND_BASE + server_round,
                       request_sha256=adapter_digest(adapter), seed=seed, releases=evaluations)


SUBSET_KEY = "subset.key"  # 32 secret bytes that rank a deployed shop's examples for its per-user selections


def subset_key(state_dir: Path) -> bytes:
    """The shop's own selection secret, made once from ``os.urandom`` and kept (0600)."""
    import os

    from fedinterest.common.atomic import atomic_write_bytes, private_dir

    path = private_dir(state_dir) / SUBSET_KEY
    with file_lock(Path(state_dir) / STATISTICS_LOCK):
        if not path.is_file():
            atomic_write_bytes(path, os.urandom(32), mode=0o600)
        elif path.stat().st_mode & 0o077:  # a key written by an older release: tighten it
            os.chmod(path, 0o600)
        key = path.read_bytes()
    if len(key) != 32:
        raise ConfigError(f"{path}: expected 32 bytes, found {len(key)}; delete it to draw a new training subset")
    return key


def selection_key(state_dir: Path | None, seed: int | None) -> bytes:
    """The key of a shop's per-user selections: its kept secret, or derived from ``seed`` (simulations, references)."""
    import hashlib

    if state_dir is not None:
        return subset_key(state_dir)
    return hashlib.sha256(f"fedinterest-selection|{0 if seed is None else int(seed)}".encode()).digest()


def _digest(data: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _sample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of all ``n`` items, or of a sorted random ``limit`` of them."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))

