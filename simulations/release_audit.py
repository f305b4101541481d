"""A many-run audit of a shop's noised releases: a distinguishing attack on neighbouring datasets.

The evaluation counts and the statistics (engagement, label flows) are cheap: a vector plus
Gaussian noise. So the audit runs the release itself many times instead of once:

1. D is the shop; D' is D less one customer, the one whose removal moves the released vector the
   most (every customer is tried; the shift the noise assumes is ``sensitivity("user")`` = 1);
2. the release is drawn ``runs`` times on each with fresh noise of the product's own calibration
   (``client.statistics.release_noise`` for the claimed ε, ``gaussian`` for the draws);
3. each draw is scored by the optimal (likelihood-ratio) test for a Gaussian shift, the projection
   on the difference of the means; a threshold and a side are picked on the first
   ``calibration`` share of the draws and tested on the rest;
4. the held-out (TPR, FPR) become an ε lower bound at 95% with Clopper-Pearson limits,
   ε ≥ log((TPR_lo − δ) / FPR_hi) (``simulations.audit_bound.distinguishing_bound``), printed
   beside its ceiling: the bound a perfect test would give with as many draws.

``broken-evaluation`` is the evaluation selection the product replaced (an even spread of
``BROKEN_LIMIT`` examples over the shop ordered user by user): removing one customer re-picks the
examples of every later one while the noise assumes a shift of 1. It is never used by the product;
the audit must flag it. All functions are pure but for the noise they draw.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from fedinterest.client.privacy import DEFAULT_DELTA, PrivacyTerms, epsilon_spent
from fedinterest.client.statistics import EVALUATION_SHARE, STATISTICS_SHARES, gaussian, release_noise, sensitivity
from fedinterest.common.config import TaskConfig
from fedinterest.common.data.schema import EventTable
from fedinterest.common.evaluation import example_counts, unit_sum
from fedinterest.common.stats import category_engagement, label_flows, transition_rows
from fedinterest.common.task import Catalogue, Taxonomy, build_taxonomy, default_split, prepare_task
from fedinterest.common.task.examples import ExampleSet
from fedinterest.common.task.selection import select_per_user

from .audit_bound import distinguishing_bound, distinguishing_ceiling
from .central import even_subset

#: The release pipelines the audit knows: the product's, and the broken one it must flag.
PIPELINES = ("evaluation", "engagement", "label-flows", "broken-evaluation")
PRODUCT = {"evaluation": True, "engagement": True, "label-flows": True, "broken-evaluation": False}
SHARES = {"evaluation": EVALUATION_SHARE, "broken-evaluation": EVALUATION_SHARE, **STATISTICS_SHARES}
BROKEN_LIMIT = 200  # examples of the old, shop-wide evaluation selection
AUDIT_KEY = bytes(range(32))  # the selection key of the audited shop (any fixed key: the attacker may know it)
CHUNK = 4096  # draws per noise batch


@dataclass(frozen=True)
class AuditedShop:
    """One shop with its public label space and calendar, fixed before any customer is removed."""

    table: EventTable
    train: ExampleSet
    test: ExampleSet
    taxonomy: Taxonomy
    catalogue: Catalogue
    before: int
    per_user: int = 1  # evaluation examples scored per customer (``eval-per-user``)

    @property
    def users(self) -> list[str]:
        return sorted(map(str, self.table.frame["user_id"].unique()))


def audited_shop(table: EventTable, task: TaskConfig | None = None, per_user: int = 1) -> AuditedShop:
    """Prepare ``table``'s examples once; neighbours drop one customer's examples from them."""
    task = task or TaskConfig()
    split = default_split(table, task)
    taxonomy = build_taxonomy(table, task.top_k, split.val_start, task.coverage, task.max_top_k)
    prepared = prepare_task(table, task, taxonomy=taxonomy, split=split, require_examples=False)
    catalogue = Catalogue.public(table) or Catalogue.observed(table)
    return AuditedShop(table, prepared.train, prepared.test, taxonomy, catalogue, split.val_start, per_user)


def without(examples: ExampleSet, user: str | None) -> ExampleSet:
    """``examples`` less those of ``user`` (each example depends on its own customer's events alone)."""
    if user is None:
        return examples
    return examples.subset(examples.events.user_ids[examples.user].astype(str) != user)


def scored_rows(examples: ExampleSet, other: int) -> np.ndarray:
    """``example_counts`` under a fixed model: each example's scores depend on that example alone."""
    n_classes = examples.events.n_classes
    probs = np.full((len(examples), n_classes), 0.2 / n_classes)
    probs[np.arange(len(examples)), examples.current] += 0.5
    probs[np.arange(len(examples)), (examples.current + 1 + examples.t // 86400 % 3) % n_classes] += 0.3
    return example_counts(probs / probs.sum(axis=1, keepdims=True), examples.label, examples.current, other)


def evaluation_vector(shop: AuditedShop, removed: str | None = None) -> np.ndarray:
    """The product's evaluation counts: at most ``per_user`` test examples per customer, by keyed rank."""
    test = without(shop.test, removed)
    chosen = test.subset(select_per_user(test, AUDIT_KEY, shop.per_user, "evaluation"))
    return unit_sum(scored_rows(chosen, shop.taxonomy.other), chosen.user)


def broken_evaluation_vector(shop: AuditedShop, removed: str | None = None, limit: int = BROKEN_LIMIT) -> np.ndarray:
    """The old selection (never used by the product): ``np.linspace`` over all test examples, user by user."""
    test = without(shop.test, removed)
    chosen = even_subset(test, limit)
    return unit_sum(scored_rows(chosen, shop.taxonomy.other), chosen.user)


def engagement_vector(shop: AuditedShop, removed: str | None = None) -> np.ndarray:
    """The engagement statistics (``category_engagement``) of the training period."""
    table = shop.table if removed is None else shop.table.without_users([removed])
    return category_engagement(table, shop.catalogue, shop.before)


def label_flow_vector(shop: AuditedShop, removed: str | None = None) -> np.ndarray:
    """The label flows (``label_flows``) of the training examples, flattened."""
    return label_flows(without(shop.train, removed), transition_rows(shop.taxonomy.n_classes)).ravel()


VECTORS: dict[str, Callable[[AuditedShop, str | None], np.ndarray]] = {
    "evaluation": evaluation_vector, "engagement": engagement_vector,
    "label-flows": label_flow_vector, "broken-evaluation": broken_evaluation_vector,
}


def worst_case_neighbour(vector: Callable[[AuditedShop, str | None], np.ndarray], shop: AuditedShop
                         ) -> tuple[str, np.ndarray, np.ndarray]:
    """(the customer whose removal moves the release most, the vector on D, the vector on D less them)."""
    full = vector(shop, None)
    best = ("", full, -1.0)
    for user in shop.users:
        moved = vector(shop, user)
        shift = float(np.linalg.norm(full - moved))
        if shift > best[2]:
            best = (user, moved, shift)
    return best[0], full, best[1]


def projected_draws(mean: np.ndarray, reference: np.ndarray, direction: np.ndarray, std: float, runs: int,
                    seed: int | None, tag: str) -> np.ndarray:
    """``runs`` releases ``mean`` + N(0, std² I), each scored by its projection on ``direction`` from ``reference``."""
    out = np.empty(runs)
    for start in range(0, runs, CHUNK):
        n = min(CHUNK, runs - start)
        noise = gaussian(n * mean.size, std, None if seed is None else seed + start, tag).reshape(n, mean.size)
        out[start:start + n] = (mean - reference + noise) @ direction
    return out


def best_test(positives: np.ndarray, negatives: np.ndarray, delta: float, beta: float,
              candidates: int = 256) -> tuple[float, int]:
    """(threshold, side) whose (TPR, FPR) gives the largest bound on these draws; side +1 says
    "D" above the threshold, −1 says "D'" below it (the symmetric test)."""
    pooled = np.concatenate([positives, negatives])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, candidates)))
    pos, neg = np.sort(positives), np.sort(negatives)
    best = (float(thresholds[-1]), 1, -1.0)
    for t in thresholds:
        above_pos = len(pos) - np.searchsorted(pos, t, side="right")
        above_neg = len(neg) - np.searchsorted(neg, t, side="right")
        for side, tp, n_tp, fp, n_fp in ((1, above_pos, len(pos), above_neg, len(neg)),
                                         (-1, len(neg) - above_neg, len(neg), len(pos) - above_pos, len(pos))):
            bound = distinguishing_bound(int(tp), n_tp, int(fp), n_fp, delta, beta)
            if bound > best[2]:
                best = (float(t), side, bound)
    return best[0], best[1]


def distinguish(mean_in: np.ndarray, mean_out: np.ndarray, std: float, runs: int, delta: float,
                beta: float = 0.05, calibration: float = 0.1, seed: int | None = None) -> dict:
    """The distinguishing attack: ``runs`` noised releases on each of D (``mean_in``) and D' (``mean_out``).

    The statistic is the projection on ``mean_in − mean_out``; threshold and side are chosen on the first
    ``calibration`` share of the draws, and the bound is computed on the rest only, so it stays valid.
    """
    if runs < 100:
        raise ValueError(f"runs must be at least 100, got {runs}")
    difference = np.asarray(mean_in, float) - np.asarray(mean_out, float)
    norm = float(np.linalg.norm(difference))
    direction = difference / norm if norm > 0 else np.eye(difference.size)[0]
    pos = projected_draws(np.asarray(mean_in, float), np.asarray(mean_out, float), direction, std, runs, seed, "in")
    neg = projected_draws(np.asarray(mean_out, float), np.asarray(mean_out, float), direction, std, runs,
                          None if seed is None else seed + 7_919_000, "out")
    held = int(round(runs * calibration))
    threshold, side = best_test(pos[:held], neg[:held], delta, beta)
    pos, neg = pos[held:], neg[held:]
    if side > 0:
        tp, fp, n_tp, n_fp = int((pos > threshold).sum()), int((neg > threshold).sum()), len(pos), len(neg)
    else:
        tp, fp, n_tp, n_fp = int((neg <= threshold).sum()), int((pos <= threshold).sum()), len(neg), len(pos)
    return {"eps_lower_bound": distinguishing_bound(tp, n_tp, fp, n_fp, delta, beta),
            "ceiling": distinguishing_ceiling(len(pos), delta, beta), "tpr": tp / n_tp, "fpr": fp / n_fp,
            "threshold": threshold, "side": side, "shift": norm, "runs": runs, "held_out": len(pos)}


@dataclass
class ReleaseAuditResult:
    release: str
    claimed_epsilon: float  # what the ledger charges this one release
    accountant_epsilon: float  # the accountant's ε of the release's σ (at most the claim)
    delta: float
    noise_multiplier: float
    user: str  # the removed customer
    attack: dict
    seconds: float = 0.0
    unit: str = "user"

    @property
    def product(self) -> bool:
        return PRODUCT[self.release]

    @property
    def lower_bound(self) -> float:
        return float(self.attack["eps_lower_bound"])

    @property
    def ceiling(self) -> float:
        return float(self.attack["ceiling"])

    @property
    def verdict(self) -> str:
        return verdict(self.lower_bound, self.claimed_epsilon, self.ceiling, self.product)

    @property
    def failed(self) -> bool:
        """A product release above its claim, or the broken pipeline not flagged."""
        return self.verdict == "VIOLATION" or self.verdict.startswith("NOT flagged")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(lower_bound=self.lower_bound, ceiling=self.ceiling, verdict=self.verdict, product=self.product)
        return out


def verdict(lower_bound: float, claimed: float, ceiling: float, product: bool = True) -> str:
    """pass / VIOLATION / no power for a product row; flagged / NOT flagged for the broken pipeline."""
    if lower_bound > claimed:
        return "VIOLATION" if product else "flagged, as it should be"
    if not product:
        return "NOT flagged" if claimed < ceiling else "NOT flagged (no power)"
    return "no power" if claimed > ceiling else "pass"


def audit_release(shop: AuditedShop, release: str, claimed: float, runs: int = 50_000,
                  delta: float = DEFAULT_DELTA, beta: float = 0.05, seed: int | None = None,
                  accountant: str = "prv") -> ReleaseAuditResult:
    """Audit one release pipeline charged ``claimed`` ε at user level: worst neighbour, ``runs`` draws each."""
    if release not in VECTORS:
        raise ValueError(f"unknown release {release!r}; one of {', '.join(PIPELINES)}")
    started = time.perf_counter()
    terms = PrivacyTerms("user", delta, accountant)
    share = SHARES[release]
    sigma = release_noise(claimed / share, share, terms)  # the σ the product charges ``claimed`` for
    user, full, moved = worst_case_neighbour(VECTORS[release], shop)
    attack = distinguish(full, moved, sigma * sensitivity("user"), runs, delta, beta, seed=seed)
    return ReleaseAuditResult(release, claimed, epsilon_spent([(sigma, 1.0, 1)], delta, accountant), delta, sigma,
                              user, attack, time.perf_counter() - started)


def release_table(results: list[ReleaseAuditResult]) -> list[tuple]:
    """Rows (release, engine/unit, claimed ε, accountant ε, lower bound, ceiling, verdict) for the audit table."""
    return [(r.release, f"-/{r.unit}", r.claimed_epsilon, r.accountant_epsilon, r.lower_bound, r.ceiling,
             f"{r.verdict} (shift {r.attack['shift']:.2f}, TPR {r.attack['tpr']:.3f} FPR {r.attack['fpr']:.5f})")
            for r in results]


def describe(result: ReleaseAuditResult) -> str:
    a = result.attack
    return (f"{result.release}, claimed ε {result.claimed_epsilon:g}: σ {result.noise_multiplier:.3f}, worst shift "
            f"{a['shift']:.3f} (removing {result.user}), TPR {a['tpr']:.4f} FPR {a['fpr']:.5f} over "
            f"{a['held_out']} draws each: lower bound {result.lower_bound:.3f} (ceiling {result.ceiling:.2f}), "
            f"{result.verdict}, {result.seconds:.0f} s")


__all__ = ["PIPELINES", "AuditedShop", "ReleaseAuditResult", "audit_release", "audited_shop", "distinguish",
           "verdict", "worst_case_neighbour", "release_table", "describe"]
