"""A one-run privacy audit of a shop's DP-SGD, printed beside the ε it claims.

In the style of Steinke, Nasr and Jagielski 2023 ("Privacy Auditing with One (1) Training Run"):
``m`` canaries, each included in one shop's data independently with probability ½, and the
whole local pipeline run once, exactly as a federated client trains (``LocalShop.train_round``
under its own ledger, every round). A canary is a privacy unit with a rare history and a random
label: at example level one example (a user with a single example), at user level a user with
several examples. The auditor then scores every canary

- white-box, from the shop's update (what the server would hold without secure aggregation):
  the alignment of the update with the canary's own descent direction at the start;
- black-box, from the model alone: how much the loss on the canary's examples fell,

guesses "in" for the highest scores and "out" for the lowest, and turns the correct guesses into
an ε lower bound at 95% confidence (``simulations.audit_bound``). A lower bound above the claimed
ε is a bug in the privacy machinery. Beside it stands the audit's ceiling, the bound with every
guess correct (``audit_ceiling``): a claim above it is "no power", since no run could refute it.
Either DP engine trains (``AuditConfig.engine``: Opacus hooks or ``client.fast_dp``).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedinterest.client.privacy import PrivacyConfig
from fedinterest.client.shop import LocalShop, ModelConfig, SharedModel
from fedinterest.client.training import TrainConfig, logits_of, predict_proba
from fedinterest.common.config import DAY, TaskConfig
from fedinterest.common.data.schema import Action, EventTable
from fedinterest.common.model import LoraSettings
from fedinterest.common.task import TemporalSplit, Taxonomy, build_taxonomy, default_split, prepare_task

from .audit_bound import audit, audit_ceiling

CANARY = "canary-"


@dataclass(frozen=True)
class AuditConfig:
    """One audited run: a shop with ``canaries`` candidates, trained at ``epsilon`` (None: non-private)."""

    epsilon: float | None = 8.0
    unit: str = "user"
    canaries: int = 1000
    examples_per_canary: int | None = None  # default: 1 at example level, 3 at user level
    rounds: int = 2
    epochs: float = 2.0
    batch_size: int = 64
    learning_rate: float = 0.05
    clip: float = 1.0
    max_length: int = 48
    backbone: str = "tiny"
    lora_layers: tuple[int, ...] | None = (-1,)
    seed: int | None = None  # None: inclusion, sampling and noise from the OS CSPRNG
    engine: str = "opacus"  # per-example gradients: "opacus" or "fast" (``TrainConfig.dp_engine``)

    @property
    def per_canary(self) -> int:
        if self.examples_per_canary is not None:
            return self.examples_per_canary
        return 1 if self.unit == "example" else 3


@dataclass
class AuditResult:
    config: AuditConfig
    claimed_epsilon: float  # the budget (inf: non-private)
    accountant_epsilon: float  # what the ledger says was spent (inf: non-private)
    delta: float
    accountant: str
    included: int
    white_box: dict = field(default_factory=dict)
    black_box: dict = field(default_factory=dict)
    seconds: float = 0.0
    ceiling: float = math.inf  # the largest bound this audit could certify (every guess correct)

    @property
    def lower_bound(self) -> float:
        return max(self.white_box["eps_lower_bound"], self.black_box["eps_lower_bound"])

    @property
    def consistent(self) -> bool:
        """The measured lower bound stays below the claim (always true for a non-private run)."""
        return self.lower_bound <= self.claimed_epsilon

    @property
    def verdict(self) -> str:
        """pass / VIOLATION / no power (the claim is above what the audit could ever certify)."""
        if math.isinf(self.claimed_epsilon):
            return "non-private: the audit's power"
        from .release_audit import verdict

        return verdict(self.lower_bound, self.claimed_epsilon, self.ceiling)

    @property
    def failed(self) -> bool:
        return self.verdict == "VIOLATION"

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "config"}
        out["config"] = asdict(self.config)
        out.update(lower_bound=self.lower_bound, consistent=self.consistent, verdict=self.verdict, release="dp-sgd")
        return out


# ----------------------------------------------------------------------------- canaries


def canary_table(taxonomy: Taxonomy, split: TemporalSplit, count: int, per_canary: int,
                 rng: np.random.Generator) -> tuple[EventTable, Taxonomy]:
    """``count`` canary users, and the label space extended by their rare labels.

    Each canary has four history events on random catalogue categories a few hours before its
    first prediction time, then ``per_canary`` prediction times two days apart (in the training
    period), each followed by two purchases in a category of its own that nobody else buys:
    exactly ``per_canary`` training examples, each with a label that only this canary carries.
    The label space is the shop's taxonomy plus those rare categories (published for the audit).
    """
    named = len(taxonomy.categories)
    first_day = split.start // DAY + 2
    last_day = split.val_start // DAY - 2 * per_canary - 1
    if last_day < first_day:
        raise ValueError("the training period is too short for canaries")
    rows, extra = [], []
    for i in range(count):
        user, t0 = f"{CANARY}{i:05d}", int(rng.integers(first_day, last_day + 1)) * DAY
        for j, category in enumerate(rng.choice(named, size=4, replace=False)):
            rows.append((user, f"{CANARY}item-{i}-{j}", taxonomy.categories[category],
                         int(rng.choice([Action.VIEW, Action.CART])), t0 - 3600 * (4 - j)))
        for day in range(per_canary):
            label = f"{CANARY}label-{i}-{day}"
            extra.append(label)
            for k in range(2):
                rows.append((user, f"{CANARY}item-{i}-buy-{day}", label, int(Action.BUY),
                             t0 + 2 * DAY * day + 60 * (k + 1)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category", "action", "timestamp"])
    labels = Taxonomy((*taxonomy.categories, *extra),
                      (*taxonomy.names, *(f"rare find {n}" for n in range(len(extra)))))
    return EventTable.from_records(frame, source="canaries"), labels


def with_canaries(base: EventTable, canaries: EventTable, included: np.ndarray) -> EventTable:
    """The shop's events plus those of the included canaries."""
    keep = canaries.frame["user_id"].astype(str).map(
        lambda u: bool(included[int(u[len(CANARY):])])).to_numpy()
    records = pd.concat([base.frame.astype({"user_id": str, "item_id": str, "category": str}),
                         canaries.frame[keep].astype({"user_id": str, "item_id": str, "category": str})],
                        ignore_index=True)
    table = EventTable.from_records(records.drop(columns=[c for c in records if c == "merchant_id"]),
                                    source=f"{base.report.source} + canaries")
    table.category_names = dict(base.category_names)
    return table


# ----------------------------------------------------------------------------- the run


def run_audit(base: EventTable, config: AuditConfig, task: TaskConfig | None = None,
              state_dir: str | Path | None = None, progress=print) -> AuditResult:
    """Train once on ``base`` + the included canaries, score all canaries, bound ε."""
    import time

    started = time.perf_counter()
    task = task or TaskConfig()
    rng = np.random.default_rng(np.frombuffer(os.urandom(32), dtype=np.uint32) if config.seed is None
                                else [config.seed, 0xA0D17])
    split = default_split(base, task)
    shop_labels = build_taxonomy(base, task.top_k, split.val_start, task.coverage, task.max_top_k)
    canaries, taxonomy = canary_table(shop_labels, split, config.canaries, config.per_canary, rng)
    canaries.category_names = dict(base.category_names)
    included = rng.random(config.canaries) < 0.5

    privacy = PrivacyConfig(epsilon=config.epsilon, unit=config.unit)
    train = TrainConfig(batch_size=config.batch_size, physical_batch_size=max(config.batch_size, 64),
                        learning_rate=config.learning_rate, epochs=config.epochs, max_grad_norm=config.clip,
                        max_length=config.max_length, dp_engine=config.engine)
    model = ModelConfig(backbone=config.backbone, lora=LoraSettings(layers=config.lora_layers,
                                                                    seed=config.seed or 0))
    shared = SharedModel(model, taxonomy.class_names, "cpu")
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="fedinterest-audit-"))
    shop = LocalShop(with_canaries(base, canaries, included), state_dir=state, privacy=privacy, train=train,
                     model=model, task=task, taxonomy=taxonomy, split=split, shared=shared,
                     seed=config.seed or 0, ledger_home=state / "ledger-home")  # a simulated shop: a fresh ledger
    scoring = CanaryScoring(shared, canaries, taxonomy, split, task, config)
    start = scoring.snapshot()
    losses_before = scoring.losses()
    gradients = scoring.gradients()
    for r in range(config.rounds):
        seed = None if config.seed is None else config.seed * 1000 + r
        outcome = shop.train_round(total_rounds=config.rounds, seed=seed)
        if outcome.declined:
            raise RuntimeError(f"audit shop declined round {r + 1}: {outcome.reason}")
    update = scoring.snapshot() - start
    white = -(gradients @ update) / np.maximum(np.linalg.norm(gradients, axis=1), 1e-12)
    black = losses_before - scoring.losses()

    terms = shop.ledger.terms if shop.ledger is not None else None
    delta = terms.delta if terms else 0.0
    result = AuditResult(
        config=config,
        claimed_epsilon=config.epsilon if config.epsilon is not None else math.inf,
        accountant_epsilon=shop.ledger.spent if shop.ledger is not None else math.inf,
        delta=delta,
        accountant=terms.accountant if terms else "none",
        included=int(included.sum()),
        white_box=audit(white, included, delta),
        black_box=audit(black, included, delta),
        seconds=time.perf_counter() - started,
        ceiling=audit_ceiling(config.canaries, delta),
    )
    progress(describe(result))
    return result


class CanaryScoring:
    """Every canary's examples (included or not), their loss and their gradient under the shared model."""

    def __init__(self, shared: SharedModel, canaries: EventTable, taxonomy: Taxonomy, split: TemporalSplit,
                 task: TaskConfig, config: AuditConfig):
        examples = prepare_task(canaries, task, taxonomy=taxonomy, split=split, require_examples=False).train
        ids = examples.events.user_ids[examples.user]
        self.owner = np.array([int(u[len(CANARY):]) for u in ids])
        if len(np.unique(self.owner)) != config.canaries or len(examples) != config.canaries * config.per_canary:
            raise RuntimeError(f"canaries gave {len(examples)} examples for {len(np.unique(self.owner))} canaries")
        self.shared, self.examples, self.count = shared, examples, config.canaries
        self.data = shared.dataset(examples, canaries.category_names, config.max_length)
        self.network = self.data.network(shared.model)
        self.params = [p for p in self.network.parameters() if p.requires_grad]

    def snapshot(self) -> np.ndarray:
        return torch.cat([p.detach().flatten() for p in self.params]).double().numpy()

    def losses(self) -> np.ndarray:
        """Mean cross-entropy of each canary's examples."""
        probs = predict_proba(self.shared.model, self.data)
        loss = -np.log(np.maximum(probs[np.arange(len(probs)), self.examples.label], 1e-12))
        return np.bincount(self.owner, weights=loss, minlength=self.count) / np.bincount(self.owner, minlength=self.count)

    def gradients(self) -> np.ndarray:
        """Each canary's gradient of its mean loss, flattened like ``snapshot``."""
        self.network.eval()
        out = np.zeros((self.count, sum(p.numel() for p in self.params)))
        for canary in range(self.count):
            batch = self.data.batch(np.flatnonzero(self.owner == canary).tolist(), torch.device("cpu"))
            loss = F.cross_entropy(logits_of(self.network, batch), batch["labels"])
            grads = torch.autograd.grad(loss, self.params)
            out[canary] = torch.cat([g.flatten() for g in grads]).double().numpy()
        return out


# ----------------------------------------------------------------------------- reporting


def describe(result: AuditResult) -> str:
    c = result.config
    claim = "∞ (non-private)" if math.isinf(result.claimed_epsilon) else f"{result.claimed_epsilon:g}"
    return (f"dp-sgd ({c.engine}), {c.unit}-level, claimed ε {claim}: accountant ε {result.accountant_epsilon:.3f}, "
            f"lower bound {result.lower_bound:.3f} (white-box {result.white_box['eps_lower_bound']:.3f}, "
            f"black-box {result.black_box['eps_lower_bound']:.3f}; ceiling {result.ceiling:.2f}; {c.canaries} "
            f"canaries, {result.included} included), {result.verdict}, {result.seconds:.0f} s")


def dp_sgd_rows(results: list[AuditResult]) -> list[tuple]:
    """Rows (release, engine/unit, claimed ε, accountant ε, lower bound, ceiling, verdict) of one-run audits."""
    return [("dp-sgd", f"{r.config.engine}/{r.config.unit}", r.claimed_epsilon, r.accountant_epsilon, r.lower_bound,
             r.ceiling, f"{r.verdict} (white {r.white_box['eps_lower_bound']:.2f}, "
             f"black {r.black_box['eps_lower_bound']:.2f}, {r.config.canaries} canaries)") for r in results]


def format_table(rows: list[tuple]) -> str:
    """The audit table: one row per audited release, its bound beside the claim and the ceiling."""
    header = (f"{'release':<18} {'engine/unit':<13} {'claimed ε':>9} {'accountant ε':>12} {'lower bound':>11} "
              f"{'ceiling':>7}  verdict")
    lines = [header, "-" * len(header)]
    for release, unit, claimed, spent, lower, ceiling, verdict in rows:
        number = lambda x, p: "inf" if math.isinf(x) else f"{x:.{p}f}"  # noqa: E731
        lines.append(f"{release:<18} {unit:<13} {('inf' if math.isinf(claimed) else f'{claimed:g}'):>9} "
                     f"{number(spent, 3):>12} {lower:>11.3f} {number(ceiling, 2):>7}  {verdict}")
    return "\n".join(lines)


def audit_table(results: list[AuditResult]) -> str:
    return format_table(dp_sgd_rows(results))
