"""The shop's privacy ledger: the only record of what the shop has released, and what it refuses.

One append-only file per shop, ``<state>/privacy_ledger.jsonl``: one JSON record per line, each
sealed with a sha256 over its content and the previous record's seal, so an edited, reordered or
dropped record breaks the chain. Records, in order:

- ``terms``: the privacy unit, δ and accountant, fixed at the shop's first release;
- ``plan``: the DP-SGD schedule (σ, sample rate, steps, rounds, clip), fixed at the first round;
- ``release``: one run of a mechanism (its ``(σ, q, steps)`` phases), the ε after it and the budget
  it was checked against; ``replay`` records a bit-identical repeat of an earlier release.

Every operation takes an exclusive ``fcntl.flock`` on ``privacy_ledger.lock``, re-reads the file,
decides, and appends (by atomic rewrite: temp file, fsync, rename) before it lets go. Nothing is
cached between calls, so any number of processes and ``LocalShop`` views on one state directory
share one budget. A release is reserved before its data is computed or leaves the shop: a crash
can only over-count. A damaged file is an error, never a silent reset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from common.atomic import atomic_write_text, private_dir
from common.data.schema import DataError

from .privacy import Phase, PrivacyConfig, PrivacyPlan, PrivacyTerms, epsilon_spent

LEDGER_FILE = "privacy_ledger.jsonl"
LOCK_FILE = "privacy_ledger.lock"
FORMAT = "fedinterest-privacy-ledger/2"
GENESIS = "0" * 64
KINDS = ("dp-sgd", "statistics", "replay")


class LedgerError(DataError):
    """A ledger file that cannot be trusted, or a request it cannot take; the message says what to do."""


@dataclass(frozen=True)
class Release:
    """One release the shop made (or reserved), in ledger order."""

    seq: int
    kind: str  # "dp-sgd" (one training round), "statistics", "replay" (an earlier release, repeated)
    phases: tuple[Phase, ...]
    epsilon: float  # spent after this release
    budget: float  # the budget it was checked against
    server_round: int | None = None
    input_sha256: str = ""  # what the release started from (the global adapter)
    recorded_at: float = 0.0
    replay_of: int | None = None
    delta: float = 0.0  # δ this release spends beyond its Gaussian phases (a thresholded domain selection)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self.phases)


@dataclass(frozen=True)
class LedgerState:
    """The ledger as read from disk: the terms, the plan and every release, in order."""

    terms: PrivacyTerms | None = None
    plan: PrivacyPlan | None = None
    releases: tuple[Release, ...] = ()
    head: str = GENESIS  # seal of the last record

    @property
    def history(self) -> list[Phase]:
        """Every phase released, consecutive equal (σ, q) merged: the accountant's input."""
        out: list[Phase] = []
        for release in self.releases:
            for sigma, rate, steps in release.phases:
                if out and out[-1][:2] == (sigma, rate):
                    out[-1] = (sigma, rate, out[-1][2] + steps)
                else:
                    out.append((sigma, rate, int(steps)))
        return out

    @property
    def spent(self) -> float:
        """ε after the last release, as accounted when it was recorded (0 before any)."""
        return self.releases[-1].epsilon if self.releases else 0.0

    @property
    def extra_delta(self) -> float:
        """δ spent outside the accountant's Gaussian phases (thresholded selections)."""
        return sum(r.delta for r in self.releases)

    @property
    def accountant_delta(self) -> float:
        """The δ at which the accountant states ε: the terms' δ less what thresholded selections spent."""
        assert self.terms is not None
        return self.terms.delta - self.extra_delta

    @property
    def rounds(self) -> list[Release]:
        """The training rounds released (replays of one included: each is a release too)."""
        def training(r: Release) -> bool:
            return r.kind == "dp-sgd" or (r.kind == "replay" and training(self.releases[r.replay_of - 1]))

        return [r for r in self.releases if training(r)]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float
    reason: str
    release: Release | None = None  # the reserved release, when allowed


class PrivacyLedger:
    """A handle on one state directory's ledger; every read goes to the file."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.path = self.dir / LEDGER_FILE

    @classmethod
    def open(cls, state_dir: str | Path) -> "PrivacyLedger":
        """The shop's ledger (checked now, so a damaged file fails early)."""
        ledger = cls(state_dir)
        ledger.read()
        return ledger

    # ------------------------------------------------------------------ reading

    def read(self) -> LedgerState:
        """The ledger as it is on disk now, verified record by record."""
        with self._lock(fcntl.LOCK_SH):
            return self._load()

    @property
    def state(self) -> LedgerState:
        return self.read()

    @property
    def plan(self) -> PrivacyPlan | None:
        return self.read().plan

    @property
    def terms(self) -> PrivacyTerms | None:
        return self.read().terms

    @property
    def spent(self) -> float:
        return self.read().spent

    @property
    def rounds(self) -> list[Release]:
        return self.read().rounds

    @property
    def releases(self) -> tuple[Release, ...]:
        return self.read().releases

    # ------------------------------------------------------------------ fixing terms and plan

    def fix_terms(self, terms: PrivacyTerms) -> PrivacyTerms:
        """The ledger's terms: ``terms`` on first use; afterwards they must match."""
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            if state.terms is None:
                self._append(state, {"kind": "terms", "terms": _asdict(terms)})
                return terms
            if state.terms != terms:
                raise LedgerError(
                    f"{self.path}: this shop's releases are accounted {state.terms.describe()}; the configuration "
                    f"asks for {terms.describe()}. Terms are fixed once a release is made: keep them, or use a "
                    "new state directory only if none of the earlier releases reached anyone"
                )
            return state.terms

    def fix_plan(self, make: Callable[[LedgerState], PrivacyPlan]) -> PrivacyPlan:
        """The ledger's DP-SGD plan; ``make(state)`` builds it (under the lock) on first use."""
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            if state.plan is not None:
                return state.plan
            if state.terms is None:
                raise LedgerError(f"{self.path}: fix the privacy terms before planning")
            plan = make(state)
            if (plan.unit, plan.delta, plan.accountant) != (state.terms.unit, state.accountant_delta,
                                                            state.terms.accountant):
                raise LedgerError(f"{self.path}: the plan ({plan.describe()}) does not follow the terms "
                                  f"({state.terms.describe()})")
            self._append(state, {"kind": "plan", "plan": plan.to_dict()})
            return plan

    # ------------------------------------------------------------------ releasing

    def reserve(self, kind: str, phases: list[Phase], budget: float, server_round: int | None = None,
                input_sha256: str = "", delta: float = 0.0) -> Decision:
        """Record a release before it happens, if the ε after it stays within ``budget``.

        Check and record are one step under the lock, against the file as it is now: two
        processes cannot both spend the last of a budget. ``delta``: what the release spends of the
        shop's δ beyond its Gaussian phases; every ε from then on is stated at the δ that is left.
        """
        if kind not in KINDS[:2]:
            raise ValueError(f"release kind must be one of {KINDS[:2]}, got {kind!r}")
        phases = [(float(s), float(q), int(n)) for s, q, n in phases]
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            if state.terms is None:
                raise LedgerError(f"{self.path}: fix the privacy terms before the first release")
            now = state.spent
            left = state.accountant_delta - float(delta)
            if not left > 0:
                return Decision(False, now, float("inf"), budget,
                                f"privacy budget: this {kind} release would spend δ {delta:.2e}, more than the "
                                f"{state.accountant_delta:.2e} left of {state.terms.describe()}; declining")
            after = epsilon_spent([*state.history, *phases], left, state.terms.accountant)
            if not after <= budget * (1 + 1e-9):
                reason = (f"privacy budget: this {kind} release would raise ε from {now:.3f} to {after:.3f} "
                          f"{state.terms.describe()}, above the shop's budget {budget:g}; declining")
                return Decision(False, now, after, budget, reason)
            release = Release(len(state.releases) + 1, kind, tuple(phases), after, float(budget), server_round,
                              input_sha256, time.time(), delta=float(delta))
            self._append(state, {"kind": "release", "release": _asdict(release)})
            return Decision(True, now, after, budget, f"ε {now:.3f} -> {after:.3f} of {budget:g}", release)

    def find_release(self, server_round: int | None, input_sha256: str, kind: str = "dp-sgd") -> Release | None:
        """The ``kind`` release for ``server_round`` that started from the same input (adapter or request)."""
        if server_round is None:
            return None
        for release in self.read().releases:
            if (release.kind == kind and release.server_round == server_round
                    and release.input_sha256 == input_sha256):
                return release
        return None

    def record_replay(self, original: Release) -> Release:
        """Record that ``original`` is released again, bit for bit (no new privacy loss)."""
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            release = Release(len(state.releases) + 1, "replay", (), state.spent, original.budget,
                              original.server_round, original.input_sha256, time.time(), original.seq)
            self._append(state, {"kind": "release", "release": _asdict(release)})
            return release

    # ------------------------------------------------------------------ reporting

    def summary(self, budget: float | None = None) -> str:
        state = self.read()
        if state.terms is None:
            return f"{self.path}: no release yet"
        budget = budget if budget is not None else (
            state.releases[-1].budget if state.releases else (state.plan.epsilon if state.plan else None))
        lines = [f"ledger {self.path}", f"terms: ε {state.terms.describe()}"]
        if state.plan:
            lines.append(f"plan: {state.plan.describe()}")
        lines += ["", f"{'#':>3}  {'kind':<10}  {'server round':>12}  {'steps':>6}  {'ε after':>8}"]
        for r in state.releases:
            server = "-" if r.server_round is None else str(r.server_round)
            kind = r.kind if r.replay_of is None else f"replay of #{r.replay_of}"
            lines.append(f"{r.seq:>3}  {kind:<10}  {server:>12}  {r.steps:>6}  {r.epsilon:>8.3f}")
        spent = state.spent
        lines.append("")
        if budget is not None:
            lines.append(f"budget ε={budget:g}, spent ε={spent:.3f}, left ε={max(budget - spent, 0.0):.3f} "
                         f"({state.terms.describe()})")
        else:
            lines.append(f"spent ε={spent:.3f} ({state.terms.describe()})")
        if state.plan:
            trained = sum(1 for r in state.releases if r.kind == "dp-sgd")
            lines.append(f"training rounds recorded: {trained} of {state.plan.rounds} planned")
        return "\n".join(lines)

    # ------------------------------------------------------------------ the file

    @contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        if mode == fcntl.LOCK_SH and not self.path.exists():
            yield  # nothing to read yet; writers take the exclusive lock
            return
        private_dir(self.dir)
        with open(self.dir / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load(self) -> LedgerState:
        if not self.path.exists():
            legacy = self.dir / "privacy_ledger.json"
            if legacy.exists():
                raise LedgerError(f"{legacy}: a ledger in the old single-file format; it is never converted or "
                                  "reset automatically: keep it as the record of what this shop spent, and "
                                  "start this shop on a new state directory")
            return LedgerState()
        try:
            return _parse(self.path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(
                f"{self.path}: the privacy ledger is damaged ({exc}). It is never reset automatically: "
                "restore it from a backup; move it away only if you accept that this shop's spent "
                "privacy is forgotten."
            ) from None

    def _append(self, state: LedgerState, body: dict) -> None:
        """Write the file with one more record (called under the exclusive lock)."""
        record = {"format": FORMAT, "seq": _count(state), **body, "prev": state.head}
        record["sha256"] = _digest(record)
        line = json.dumps(record, sort_keys=True, allow_nan=False)
        old = self.path.read_text() if self.path.exists() else ""
        atomic_write_text(self.path, old + line + "\n")


def terms_for(ledger: PrivacyLedger, privacy: PrivacyConfig, n_units: int) -> PrivacyTerms:
    """Fix (or confirm) the ledger's terms for a shop of ``n_units`` units under ``privacy``.

    A default δ, once fixed, stays as long as it is below 1/n (the shop may grow); a δ the
    merchant set explicitly must match the one fixed.
    """
    proposed = privacy.terms(n_units)
    fixed = ledger.terms
    if fixed is not None and privacy.delta is None and fixed.delta < 1.0 / max(n_units, 1):
        proposed = PrivacyTerms(proposed.unit, fixed.delta, proposed.accountant)
    return ledger.fix_terms(proposed)


def _count(state: LedgerState) -> int:
    return (state.terms is not None) + (state.plan is not None) + len(state.releases)


def _parse(text: str) -> LedgerState:
    """The verified state of a ledger file's text (``ValueError`` naming the first bad record)."""
    if not text.endswith("\n"):
        raise ValueError("the last record is incomplete")
    terms, plan, releases, head = None, None, [], GENESIS
    for number, line in enumerate(text.splitlines(), start=1):
        record = json.loads(line)
        seal = record.pop("sha256", None)
        if record.get("format") != FORMAT:
            raise ValueError(f"record {number} is not a {FORMAT} record")
        if seal != _digest(record):
            raise ValueError(f"record {number}: checksum mismatch (the content was changed or damaged)")
        if record.get("prev") != head or record.get("seq") != number - 1:
            raise ValueError(f"record {number} does not follow record {number - 1} (records removed or reordered)")
        kind = record["kind"]
        if kind == "terms" and terms is None and number == 1:
            terms = PrivacyTerms(**record["terms"])
        elif kind == "plan" and plan is None and terms is not None:
            plan = PrivacyPlan.from_dict(record["plan"])
        elif kind == "release" and terms is not None:
            fields = dict(record["release"])
            fields["phases"] = tuple((float(s), float(q), int(n)) for s, q, n in fields["phases"])
            release = Release(**fields)
            if release.kind not in KINDS or release.seq != len(releases) + 1:
                raise ValueError(f"record {number}: release {release.seq} of kind {release.kind!r} is out of place")
            releases.append(release)
        else:
            raise ValueError(f"record {number}: a {kind!r} record is out of place")
        head = seal
    return LedgerState(terms, plan, tuple(releases), head)


def _asdict(value) -> dict:
    from dataclasses import asdict

    return asdict(value)


def _digest(record: dict) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
