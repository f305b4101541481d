"""What a privacy budget buys, before anything is spent: the plan a shop's ledger will fix.

``plan_budget`` composes the same releases, in the same way, as a private shop does: the DP
top-K of its engagement (unless the label space is published) and its label flows for the
priors (``client.statistics``), the federated evaluations the run announces (reserved from the
first round), then the DP-SGD rounds, with σ from ``plan_privacy``. So the ε it prints after each
round is the ε the ledger will record. ``epsilon_for_sigma`` goes the other way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .privacy import Phase, PrivacyConfig, PrivacyTerms, epsilon_spent, plan_privacy
from .statistics import STATISTICS_SHARES, release_noise, reserved_evaluations
from .training import TrainConfig

LABEL_SPACES = ("private", "published")


@dataclass(frozen=True)
class Shop:
    """A shop's size and its local-training settings: everything the plan depends on."""

    units: int  # privacy units in the training data (users, or examples)
    unit: str = "user"
    rounds: int = 3
    epochs: float = 1.0
    batch_size: int = 32
    max_steps: int | None = None
    clip: float = 1.0
    delta: float | None = None  # default DEFAULT_DELTA, as a shop's
    accountant: str = "prv"
    label_space: str = "private"  # private: the shop releases its engagement for the DP top-K
    evaluations: int = 1  # federated evaluations the run holds (train-local: 0)

    def terms(self) -> PrivacyTerms:
        return PrivacyConfig(epsilon=1.0, delta=self.delta, unit=self.unit, accountant=self.accountant).terms(self.units)

    def training(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, epochs=self.epochs, max_steps=self.max_steps,
                           max_grad_norm=self.clip)


@dataclass(frozen=True)
class BudgetPlan:
    epsilon: float | None  # the budget (None: σ was given)
    sigma: float
    sample_rate: float
    steps_per_round: int
    delta: float
    before: tuple[Phase, ...]  # the statistics releases before the first round
    reserved: tuple[Phase, ...]  # the evaluations, reserved from the first round
    epsilon_after_round: tuple[float, ...]  # ε the ledger records after each round
    epsilon_total: float  # after the last round and every evaluation
    noise_to_signal: float  # σC/B against C: one averaged step's noise over its largest signal


def statistics_phases(budget: float, shop: Shop) -> tuple[list[Phase], list[Phase]]:
    """``(before, reserved)``: the statistics releases and the evaluations, as the shop's ledger has them."""
    terms = shop.terms()
    kinds = ["engagement", "label-flows"] if shop.label_space == "private" else ["label-flows"]
    before = [(release_noise(budget, STATISTICS_SHARES[k], terms), 1.0, 1) for k in kinds]
    return before, reserved_evaluations(budget, terms, shop.evaluations)


def _schedule(sigma: float, shop: Shop, budget: float | None, before: list[Phase], reserved: list[Phase],
              ) -> BudgetPlan:
    training = shop.training()
    rate, steps = training.sample_rate(shop.units), training.steps_per_round(shop.units)
    delta = shop.terms().delta
    after = tuple(epsilon_spent([*before, (sigma, rate, steps * r)], delta, shop.accountant)
                  for r in range(1, shop.rounds + 1))
    total = epsilon_spent([*before, (sigma, rate, steps * shop.rounds), *reserved], delta, shop.accountant)
    return BudgetPlan(budget, sigma, rate, steps, delta, tuple(before), tuple(reserved), after, total,
                      sigma / (rate * shop.units))


def plan_budget(epsilon: float, shop: Shop) -> BudgetPlan:
    """σ for ``epsilon`` over the whole federation, and what the ledger will record round by round."""
    if shop.label_space not in LABEL_SPACES:
        raise ValueError(f"label space must be one of {LABEL_SPACES}, got {shop.label_space!r}")
    before, reserved = statistics_phases(epsilon, shop)
    training = shop.training()
    plan = plan_privacy(epsilon=epsilon, delta=shop.terms().delta, sample_rate=training.sample_rate(shop.units),
                        steps_per_round=training.steps_per_round(shop.units), rounds=shop.rounds,
                        max_grad_norm=shop.clip, accountant=shop.accountant, unit=shop.unit,
                        prior=[*before, *reserved])
    return _schedule(plan.noise_multiplier, shop, epsilon, before, reserved)


def epsilon_for_sigma(sigma: float, shop: Shop) -> BudgetPlan:
    """ε of the DP-SGD rounds alone at noise multiplier ``sigma`` (no statistics, no evaluation)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return _schedule(float(sigma), shop, None, [], [])
