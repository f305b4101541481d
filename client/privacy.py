"""Privacy configuration and planning: σ is planned once for the whole budget over all rounds.

The shop's budget comes from its own configuration; a value sent by the server may lower it,
never raise it. The plan asks Opacus' ``get_noise_multiplier`` for the σ that spends the budget
over ``rounds × steps_per_round`` Poisson-sampled steps (RDP by default, PRV as an option), and
is then fixed in the shop's ledger: ``make_private_with_epsilon`` per round would ignore history.

Units: with ``unit="example"`` one example (one user at one prediction time) is protected; a
user with k examples gets group privacy kε. With ``unit="user"`` each step samples users and
takes one example per sampled user, so a user's whole history is protected at ε.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from common.config import ConfigError

ACCOUNTANTS = ("rdp", "prv")
UNITS = ("example", "user")


@dataclass(frozen=True)
class PrivacyConfig:
    """A shop's own privacy settings. ``epsilon=None`` means a labelled non-private run."""

    epsilon: float | None = 8.0
    delta: float | None = None  # default: 1 / (10 * number of users)
    unit: str = "example"
    accountant: str = "rdp"

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

    def delta_for(self, n_users: int) -> float:
        return self.delta if self.delta is not None else 1.0 / (10.0 * max(n_users, 1))

    def describe(self) -> str:
        if not self.private:
            return "NON-PRIVATE (no differential privacy)"
        return f"DP ε={self.epsilon:g} ({self.unit}-level, {self.accountant.upper()})"

    def label(self) -> str:
        """A short tag for tables: every output says whether it was private."""
        return "NON-PRIVATE" if not self.private else f"DP ε={self.epsilon:g}"


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
    accountant: str = "rdp"
    unit: str = "example"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyPlan":
        return cls(**d)

    def describe(self) -> str:
        return (f"σ={self.noise_multiplier:.3f}, sample rate {self.sample_rate:.4f}, "
                f"{self.steps_per_round} steps/round × {self.rounds} rounds, clip {self.max_grad_norm:g}, "
                f"target ε={self.epsilon:g} at δ={self.delta:.2e} ({self.accountant.upper()}, {self.unit}-level)")


def plan_privacy(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    max_grad_norm: float,
    accountant: str = "rdp",
    unit: str = "example",
) -> PrivacyPlan:
    """σ that spends ``epsilon`` over ``rounds`` rounds, within 0.2% of the budget."""
    from opacus.accountants.utils import get_noise_multiplier

    if rounds < 1 or steps_per_round < 1:
        raise ConfigError("privacy plan needs at least one round of at least one step")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Optimal order.*")
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps_per_round * rounds,
                accountant=accountant,
                epsilon_tolerance=min(0.01, 0.002 * epsilon),
            )
    except ValueError as exc:
        raise ConfigError(
            f"privacy: no noise level reaches ε={epsilon:g} at δ={delta:.2e} over {rounds} rounds of "
            f"{steps_per_round} steps at sample rate {sample_rate:.4f} ({exc}); raise the budget, "
            "lower rounds or steps"
        ) from None
    return PrivacyPlan(float(sigma), sample_rate, steps_per_round, rounds, epsilon, delta, max_grad_norm,
                       accountant, unit)


def epsilon_spent(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε of a sequence of (noise multiplier, sample rate, steps) phases."""
    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [tuple(h) for h in history]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        return float(acc.get_epsilon(delta=delta))
