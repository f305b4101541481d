"""Privacy configuration and planning: σ is planned once for the whole budget over all rounds.

The shop's budget comes from its own configuration; a value sent by the server may lower it,
never raise it. The plan finds the σ that spends the budget over ``rounds × steps_per_round``
Poisson-sampled steps, composed with whatever the shop released before (the federated statistics
round), and is then fixed in the shop's ledger: ``make_private_with_epsilon`` per round would
ignore history. Planning and reporting use the same accountant: PRV by default (RDP overstates
ε by about one unit at ε = 8), RDP as an option.

Units (what one protected "record" is):
- ``user`` (default): one customer of the shop and everything they did. Each step samples users
  (Poisson) and takes one example per sampled user, so a user changes at most one clipped
  gradient per step. δ defaults to 1e-5 (``DEFAULT_DELTA``), the same for every shop.
- ``example``: one user at one prediction time. A user with k examples gets only group privacy
  (about kε). δ is below 1/examples.
A customer of several shops is protected per shop: their ε composes over those shops.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable

from fedinterest.common.config import ConfigError

ACCOUNTANTS = ("prv", "rdp")
UNITS = ("user", "example")
DP_ENGINES = ("opacus", "fast")  # how per-example gradients are computed: Opacus' hooks, or client.fast_dp
Phase = tuple[float, float, int]  # (noise multiplier σ, sample rate q, steps)


class BudgetExhausted(ConfigError):
    """No noise level fits the rounds into what is left of the budget."""


#: δ of every shop unless its merchant sets one: 1/(10 × the platform's largest expected shop), the same for all.
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class PrivacyConfig:
    """A shop's own privacy settings. ``epsilon=None`` means a labelled non-private run."""

    epsilon: float | None = 8.0
    delta: float | None = None  # default: DEFAULT_DELTA, a public constant (never the shop's size)
    unit: str = "user"
    accountant: str = "prv"

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"privacy: epsilon must be a positive number, got {self.epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"privacy: delta must be in (0, 1), got {self.delta}")
        if self.unit not in UNITS:
            raise ConfigError(f"privacy: unit must be one of {UNITS}, got {self.unit!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy: accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    def budget(self, server_epsilon: float | None = None) -> float:
        """The ε this round may spend up to: the shop's own, lowered (never raised) by the server's."""
        if self.epsilon is None:
            raise ConfigError("privacy: a non-private configuration has no budget")
        if server_epsilon is None or not server_epsilon > 0:
            return self.epsilon
        return min(self.epsilon, float(server_epsilon))

    def delta_for(self, n_units: int) -> float:
        """δ for a shop with ``n_units`` privacy units: given, or the public ``DEFAULT_DELTA``; always below 1/n.

        δ is the same for every shop of a federation (a public rule), so neither it nor its code on the
        wire tells a shop's size.
        """
        n = max(int(n_units), 1)
        delta = DEFAULT_DELTA if self.delta is None else float(self.delta)
        if delta >= 1.0 / n:
            raise ConfigError(
                f"privacy: δ={delta:g} is not below 1/{n} ({self.unit}s in this shop): such a δ allows "
                f"releasing a {self.unit}'s data outright; set a smaller δ (node config 'delta', --delta) below "
                f"{1.0 / n:.2e}")
        return delta

    def terms(self, n_units: int) -> "PrivacyTerms":
        return PrivacyTerms(self.unit, self.delta_for(n_units), self.accountant)

    def describe(self) -> str:
        if not self.private:
            return "NON-PRIVATE (no differential privacy)"
        delta = f"δ={DEFAULT_DELTA:.0e}" if self.delta is None else f"δ={self.delta:.1e}"
        return f"DP ε={self.epsilon:g} per {self.unit}, {delta}, {self.accountant.upper()} accountant"

    def label(self) -> str:
        """A short tag for tables: every output says whether it was private, and per what."""
        return "NON-PRIVATE" if not self.private else f"DP ε={self.epsilon:g}/{self.unit}"


@dataclass(frozen=True)
class PrivacyTerms:
    """What every release of a shop is accounted under; fixed at the shop's first release."""

    unit: str
    delta: float
    accountant: str

    def describe(self) -> str:
        return f"per {self.unit}, δ={self.delta:.2e}, {self.accountant.upper()} accountant"


@dataclass(frozen=True)
class PrivacyPlan:
    """The fixed DP-SGD schedule of one shop for the whole federation."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str = "prv"
    unit: str = "user"
    expected_batch_size: float = 1.0  # sample rate × units when planned: the update's divisor

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyPlan":
        return cls(**d)

    @property
    def phase(self) -> Phase:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def describe(self) -> str:
        return (f"σ={self.noise_multiplier:.3f}, sample rate {self.sample_rate:.4f} "
                f"(expected batch {self.expected_batch_size:.1f} {self.unit}s), "
                f"{self.steps_per_round} steps/round × {self.rounds} rounds, clip {self.max_grad_norm:g}, "
                f"target ε={self.epsilon:g} per {self.unit} at δ={self.delta:.2e} ({self.accountant.upper()})")


def plan_privacy(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    max_grad_norm: float,
    accountant: str = "prv",
    unit: str = "user",
    expected_batch_size: float | None = None,
    prior: list[Phase] | tuple[Phase, ...] = (),
) -> PrivacyPlan:
    """The smallest σ (within 0.5% of ε) whose ``rounds`` rounds, after ``prior``, stay within ``epsilon``."""
    if rounds < 1 or steps_per_round < 1:
        raise ConfigError("privacy plan needs at least one round of at least one step")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"privacy plan: sample rate must be in (0, 1], got {sample_rate}")
    prior = [tuple(p) for p in prior]
    already = epsilon_spent(prior, delta, accountant)
    if already >= epsilon:
        raise BudgetExhausted(f"privacy: ε={already:.3f} is already spent of a budget of {epsilon:g}; "
                              "no training round fits")

    def eps(sigma: float) -> float:
        return epsilon_spent([*prior, (sigma, sample_rate, steps_per_round * rounds)], delta, accountant)

    high, e_high = 1.0, eps(1.0)
    while e_high > epsilon:
        high *= 2.0
        if high > 1e4:
            raise BudgetExhausted(
                f"privacy: no noise level reaches ε={epsilon:g} at δ={delta:.2e} over {rounds} rounds of "
                f"{steps_per_round} steps at sample rate {sample_rate:.4f}"
                + (f" after the ε={already:.3f} already spent" if prior else "")
                + "; raise the budget, lower rounds or steps"
            )
        e_high = eps(high)
    low, e_low = high / 2.0, eps(high / 2.0)
    while low > 1e-3 and e_low <= epsilon:
        high, e_high = low, e_low
        low, e_low = low / 2.0, eps(low / 2.0)
    high = smallest_sigma(eps, epsilon, (low, e_low), (high, e_high))
    batch = expected_batch_size if expected_batch_size is not None else sample_rate
    return PrivacyPlan(float(high), sample_rate, steps_per_round, rounds, epsilon, delta, max_grad_norm,
                       accountant, unit, float(batch))


def smallest_sigma(eps: Callable[[float], float], epsilon: float, low: tuple[float, float],
                   high: tuple[float, float], tolerance: float = 0.005) -> float:
    """The σ of a bracket ``eps(low) > epsilon >= eps(high)`` narrowed until ``eps(σ)`` is within
    ``tolerance`` below ``epsilon``: regula falsi on (log σ, log ε) with the Illinois step, which
    needs about three evaluations where bisection needs eight; bisection where ε is unbounded."""
    (s_low, e_low), (s_high, e_high) = low, high
    target = math.log(epsilon)
    weight_low = weight_high = 1.0  # Illinois: halve the weight of an end that stays put twice
    kept = None
    while e_high < (1.0 - tolerance) * epsilon and s_high - s_low > 1e-5 * s_high:
        u_low, u_high = math.log(s_low), math.log(s_high)
        if math.isfinite(e_low) and e_low > 0 and e_high > 0:
            g_low = weight_low * (math.log(e_low) - target)
            g_high = weight_high * (math.log(e_high) - target)
            u = u_high - g_high * (u_high - u_low) / (g_high - g_low)
            if not u_low < u < u_high:
                u = (u_low + u_high) / 2.0
        else:
            u = (u_low + u_high) / 2.0
        sigma = math.exp(u)
        e = eps(sigma)
        if e <= epsilon:
            s_high, e_high = sigma, e
            weight_high, weight_low = 1.0, (weight_low / 2.0 if kept == "low" else 1.0)
            kept = "low"
        else:
            s_low, e_low = sigma, e
            weight_low, weight_high = 1.0, (weight_high / 2.0 if kept == "high" else 1.0)
            kept = "high"
    return float(s_high)


#: Above this ε, PRV's numerical grid grows without bound (memory), and no budget is near: RDP answers.
PRV_LIMIT = 64.0


def epsilon_spent(history: list[Phase] | tuple[Phase, ...], delta: float, accountant: str = "prv") -> float:
    """ε of a sequence of (noise multiplier, sample rate, steps) phases (∞ where it is unbounded).

    PRV is computed only where RDP's (looser, cheap) bound is at most ``PRV_LIMIT``; beyond it the
    RDP bound is returned, which is still a valid upper bound and far above any budget.
    """
    phases = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not phases:
        return 0.0
    if accountant == "prv":
        loose = _epsilon(phases, delta, "rdp")
        if loose > PRV_LIMIT:
            return loose
    return _epsilon(phases, delta, accountant)


def _epsilon(phases: list[Phase], delta: float, accountant: str) -> float:
    return _cached_epsilon(tuple(phases), float(delta), accountant)


@lru_cache(maxsize=4096)
def _cached_epsilon(phases: tuple[Phase, ...], delta: float, accountant: str) -> float:
    """A pure function of its arguments, asked again and again by plans and ledgers: kept."""
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(phases)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # PRV at q = 1 takes log(0) in a masked branch
        try:
            return float(acc.get_epsilon(delta=delta))
        except (ValueError, OverflowError, RuntimeError, FloatingPointError):
            return math.inf  # the accountant cannot bound it: treat as unbounded
