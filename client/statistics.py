"""A shop's share of private platform statistics: a noised, bounded sum, charged to its ledger.

The platform learns statistics of all shops (which categories engage users, later the flows
between them) from the secure sum of each shop's noised vector, and nothing per shop. Each shop
adds its own Gaussian noise, so its users are protected even by its own release alone:

- every user contributes a vector of L2 norm ≤ 1 (``common.stats``), so the sum moves by at most
  Δ = 1 when a user is added or removed; at example level one example can move its user's
  vector anywhere in the unit ball, Δ = 2;
- the noise standard deviation is σ·Δ, where σ makes this one release cost ``share`` of the
  shop's budget on its own (it composes with training in the ledger, where σ_train is then
  planned for what is left);
- the release is reserved in the ledger before anything is computed; noise comes from the OS
  CSPRNG unless the node is a seeded simulation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedinterest.common import wire
from fedinterest.common.config import ConfigError
from fedinterest.common.data.schema import ACTION_WEIGHTS, EventTable
from fedinterest.common.stats import category_engagement, label_flows
from fedinterest.common.task.catalogue import Catalogue
from fedinterest.common.task.examples import ExampleSet

from .ledger import PrivacyLedger
from .privacy import PrivacyConfig, PrivacyTerms, plan_privacy

#: Of the shop's budget, what each statistics release may cost on its own: the label space needs
#: only the order of the top categories; the scorer's priors need their values.
STATISTICS_SHARES = {"engagement": 0.15, "label-flows": 0.5}
#: Of the shop's budget, what all of a run's federated evaluations cost together.
EVALUATION_SHARE = 0.1


@dataclass(frozen=True)
class StatisticsOutcome:
    declined: bool
    reason: str = ""
    vector: np.ndarray | None = None
    noise_multiplier: float = 0.0  # σ per unit of sensitivity, as charged to the ledger
    epsilon: float | None = None  # the shop's ε after the release


def sensitivity(unit: str) -> float:
    """L2 change of a bounded-contribution sum when one privacy unit changes."""
    return 1.0 if unit == "user" else 2.0


def release_noise(budget: float, share: float, terms: PrivacyTerms, releases: int = 1) -> float:
    """σ of each of ``releases`` Gaussian releases that together cost ``share × budget`` on their own."""
    if not 0 < share < 1:
        raise ConfigError(f"statistics share must be in (0, 1), got {share}")
    return plan_privacy(epsilon=share * budget, delta=terms.delta, sample_rate=1.0, steps_per_round=1,
                        rounds=max(int(releases), 1), max_grad_norm=1.0, accountant=terms.accountant,
                        unit=terms.unit).noise_multiplier


def reserved_evaluations(budget: float, terms: PrivacyTerms, evaluations: int, done: int = 0) -> list:
    """The run's evaluations still to come, as phases the ledger will compose (reserved by the DP-SGD plan)."""
    if evaluations <= done:
        return []
    return [(release_noise(budget, EVALUATION_SHARE, terms, evaluations), 1.0, evaluations - done)]


def gaussian(size: int, std: float, seed: int | None = None, tag: str = "") -> np.ndarray:
    """Gaussian noise from PCG64 seeded with 256 bits of ``os.urandom`` (or, in simulations, a seed + tag)."""
    if seed is None:
        entropy = np.frombuffer(os.urandom(32), dtype=np.uint32)
    else:
        entropy = [seed, 0x5747, *tag.encode()]  # a different stream for every kind of release
    return np.random.default_rng(entropy).normal(0.0, std, size)


def release(
    kind: str,
    compute: Callable[[], np.ndarray],
    *,
    ledger: PrivacyLedger,
    terms: PrivacyTerms,
    budget: float,
    share: float | None = None,
    server_round: int | None = None,
    request_sha256: str = "",
    seed: int | None = None,
    releases: int = 1,
) -> StatisticsOutcome:
    """One noised release of ``compute()`` (a bounded-contribution sum), reserved in the ledger first.

    Its σ makes ``releases`` like it cost ``share`` of the budget together. With a ``seed`` (a
    simulation), a request the ledger already answered is answered again bit for bit and recorded
    as a replay: the same noise reveals nothing new.
    """
    sigma = release_noise(budget, share if share is not None else STATISTICS_SHARES[kind], terms, releases)
    request = f"{kind}:{request_sha256}"
    original = ledger.find_release(server_round, request, "statistics") if seed is not None else None
    if original is not None:
        ledger.record_replay(original)
        epsilon = ledger.spent
    else:
        decision = ledger.reserve("statistics", [(sigma, 1.0, 1)], budget, server_round, request)
        if not decision.allowed:
            return StatisticsOutcome(True, decision.reason, epsilon=decision.epsilon_now)
        epsilon = decision.epsilon_after
    values = np.asarray(compute(), dtype=np.float64)
    noisy = values + gaussian(values.size, sigma * sensitivity(terms.unit), seed, kind).reshape(values.shape)
    return StatisticsOutcome(False, vector=noisy, noise_multiplier=sigma, epsilon=epsilon)


#: Of a shop's δ, what a DP partition selection (a domain read off its own events) may spend on its threshold.
PARTITION_DELTA_SHARE = 0.5
#: Categories one customer adds to a partition selection: its most engaged ones (bounds the union over them).
PARTITION_CATEGORIES_PER_USER = 16


def partition_counts(table: EventTable, before: int | None = None,
                     per_user: int = PARTITION_CATEGORIES_PER_USER) -> tuple[tuple[str, ...], np.ndarray]:
    """The categories ``table``'s events hold and Σ over users of each user's engagement on its ``per_user``
    most engaged ones, L2-normalised per user (so a category only one user touched has a value <= 1)."""
    frame = table.frame
    if before is not None:
        frame = frame[frame["timestamp"].to_numpy() < before]
    if not len(frame):
        return (), np.zeros(0)
    categories, position = np.unique(frame["category"].astype(str).to_numpy(), return_inverse=True)
    users = np.unique(frame["user_id"].astype(str).to_numpy(), return_inverse=True)[1]
    weights = ACTION_WEIGHTS[frame["action"].to_numpy()].astype(np.float64)
    keys, sums = np.unique(users.astype(np.int64) * len(categories) + position, return_inverse=True)
    engaged = np.bincount(sums, weights=weights)
    owner, category = keys // len(categories), keys % len(categories)
    order = np.lexsort((-engaged, owner))  # each user's categories, most engaged first
    owner, category, engaged = owner[order], category[order], engaged[order]
    starts = np.r_[0, np.flatnonzero(owner[1:] != owner[:-1]) + 1]
    rank = np.arange(len(owner)) - np.repeat(starts, np.diff(np.r_[starts, len(owner)]))
    keep = rank < per_user
    owner, category, engaged = owner[keep], category[keep], engaged[keep]
    norms = np.sqrt(np.bincount(owner, weights=engaged**2))
    values = np.bincount(category, weights=engaged / norms[owner], minlength=len(categories))
    return tuple(str(c) for c in categories), values


def partition_threshold(sigma: float, delta: float, per_user: int = PARTITION_CATEGORIES_PER_USER) -> float:
    """τ with ``per_user`` · P(N(1, σ²) > τ) = ``delta``: a category only the removed customer touched (value
    <= 1) passes with probability at most ``delta`` (a union over the at most ``per_user`` such categories)."""
    from scipy.stats import norm

    return 1.0 + sigma * float(norm.isf(delta / per_user))


def release_partition_selection(table: EventTable, before: int, *, ledger: PrivacyLedger, terms: PrivacyTerms,
                                budget: float, seed: int | None = None,
                                share: float | None = None) -> tuple[StatisticsOutcome, Catalogue | None]:
    """A label-space domain read off this shop's own events, privately: the categories whose noised engagement
    passes a threshold calibrated to δ (a DP partition selection), and their noised scores.

    The same Gaussian release as :func:`release_category_engagement` (σ for ``share`` of the budget), over the
    categories the events hold, each customer adding at most ``PARTITION_CATEGORIES_PER_USER``; the threshold
    spends ``PARTITION_DELTA_SHARE`` of the shop's δ, recorded in the ledger. For a log without a catalogue.
    """
    share = STATISTICS_SHARES["engagement"] if share is None else share
    sigma = release_noise(budget, share, terms) * sensitivity(terms.unit)
    spend = PARTITION_DELTA_SHARE * terms.delta
    decision = ledger.reserve("statistics", [(sigma / sensitivity(terms.unit), 1.0, 1)], budget,
                              wire.STATISTICS_ROUNDS["engagement"], "partition-selection", delta=spend)
    if not decision.allowed:
        return StatisticsOutcome(True, decision.reason, epsilon=decision.epsilon_now), None
    categories, values = partition_counts(table, before)
    noisy = values + gaussian(len(values), sigma, seed, "partition-selection")
    kept = noisy > partition_threshold(sigma, spend)
    outcome = StatisticsOutcome(False, vector=noisy[kept], noise_multiplier=sigma / sensitivity(terms.unit),
                                epsilon=decision.epsilon_after)
    chosen = tuple(c for c, k in zip(categories, kept) if k)
    return outcome, (Catalogue.named(chosen, table.category_names) if chosen else None)


def release_category_engagement(table: EventTable, catalogue: Catalogue, before: int, **kwargs) -> StatisticsOutcome:
    """The shop's noised engagement per catalogue category in the training period, or a decline."""
    return release("engagement", lambda: category_engagement(table, catalogue, before), **kwargs)


def release_label_flows(examples: ExampleSet, rows: int, **kwargs) -> StatisticsOutcome:
    """The shop's noised label flows (transitions and label totals) of its training examples, or a decline."""
    return release("label-flows", lambda: label_flows(examples, rows), **kwargs)


def answer_query(record: dict, table: EventTable, privacy: PrivacyConfig, state_dir: str, seed: int | None = None,
                 ledger_home: str | None = None, raise_budget: bool = False, reset_ledger: str | None = None
                 ) -> tuple[str, StatisticsOutcome]:
    """A shop's answer to the server's statistics ``query``: its noised vector, or a decline.

    ``record`` is the query's task record: ``query.kind`` ``engagement`` (per catalogue category,
    from which the label space is chosen) or ``label-flows`` (transitions and label totals over
    the chosen taxonomy). A non-private shop (a labelled reference run) answers exactly. The
    release is charged to the ledger of ``table``'s users in ``ledger_home`` (``client.ledger``).
    """
    from fedinterest.common.settings import PendingTask, TaskSpec
    from fedinterest.common.stats import transition_rows
    from fedinterest.common.task import count_units, prepare_task

    from .ledger import shop_ledger, terms_for

    record = dict(record)
    kind = str(record.pop("query.kind", "engagement"))
    if kind == "engagement":
        request = PendingTask.from_record_dict(record)
        compute = lambda: category_engagement(table, request.catalogue, request.split.val_start)  # noqa: E731
    elif kind == "label-flows":
        request = TaskSpec.from_record_dict(record)
        train = prepare_task(table, request.config, taxonomy=request.taxonomy, split=request.split,
                             require_examples=False).train
        compute = lambda: label_flows(train, transition_rows(request.taxonomy.n_classes))  # noqa: E731
    else:
        raise ConfigError(f"the server asks for statistics of an unknown kind {kind!r}")
    if not privacy.private:
        return kind, StatisticsOutcome(False, vector=np.asarray(compute(), dtype=np.float64))
    ledger = shop_ledger(state_dir, table, ledger_home, privacy.epsilon, raise_budget, reset_ledger or False)
    terms = terms_for(ledger, privacy, count_units(table, request.config, request.split, privacy.unit))
    return kind, release(kind, compute, ledger=ledger, terms=terms, budget=privacy.budget(),
                         server_round=wire.STATISTICS_ROUNDS[kind], request_sha256=request.fingerprint(), seed=seed)
