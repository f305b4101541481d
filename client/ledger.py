"""The privacy ledger: the only record of what a shop has released about its data, and what it refuses.

A ledger belongs to the data, not to a path. Every ledger of a node lives in one private home,
``$FEDINTEREST_HOME`` (default ``~/.fedinterest``, 0700, files 0600)::

    <home>/secret.key                          32 random bytes, made on first use
    <home>/ledgers/<id>/privacy_ledger.jsonl   the ledger of one dataset
    <home>/ledgers/<id>/members                its users' keyed tags (never raw ids)
    <home>/heads/<id>.json                     the ledger's head: record count and last seal

The ledger of a shop's data is found by its users (its privacy units). Each user id becomes a
keyed tag, HMAC-SHA256 under the home's secret, truncated to 128 bits; a new ledger is named by the
HMAC of the sorted set of tags (the data's fingerprint). **Overlap rule**: data with a user in
common with an existing ledger's members uses that ledger, and its users join the members (so
removing or adding customers never gives a fresh budget); data overlapping several ledgers merges
them into one: the survivor records a ``merge`` release carrying every phase (and δ) the others
released since their last reset, so the merged ε composes all of them (it may over-count, never
under-count), and each absorbed ledger is marked as merged and redirects to the survivor. Data
with no user in common with any ledger starts a new one. A state directory only points to its
ledger (``<state>/ledger.json``: home, ledger id, and the head as of its last write).

One append-only JSON-lines file per ledger, each record sealed with a sha256 over its content and
the previous record's seal, so an edited, reordered or dropped record breaks the chain. A dropped
*tail* keeps the chain valid, so the head (record count and seal of the last record) is kept in
two more places, the home's ``heads/`` and the state directory's ``ledger.json``, and every read
checks that the file holds the record each head names: a truncated or deleted ledger, or a missing
ledger beside a state directory's cached DP releases (taxonomy, priors), is an error. Records:

- ``terms``: the privacy unit, δ and accountant, fixed at the first release (after a reset: again);
- ``plan``: the DP-SGD schedule (σ, sample rate, steps, rounds, clip), fixed at the first round;
- ``release``: one run of a mechanism (its ``(σ, q, steps)`` phases), the ε after it and the budget
  it was checked against; ``replay`` records a bit-identical repeat of an earlier release;
  ``merge`` the phases of a ledger merged into this one;
- ``budget``: a budget above every one recorded before, allowed explicitly (``--raise-budget``);
  without it a larger budget is refused;
- ``reset``: an explicit ``--reset-ledger``: ε is counted from zero after it (terms and plan are
  fixed anew), but every record before it stays, and ``fedinterest ledger show`` lists it.

Every operation takes an exclusive ``fcntl.flock`` on the ledger's lock file, re-reads the file,
decides, and appends (by atomic rewrite: temp file, fsync, rename) before it lets go. Nothing is
cached between calls, so any number of processes and ``LocalShop`` views share one budget. A
release is reserved before its data is computed or leaves the shop: a crash can only over-count.
A damaged file is an error, never a silent reset. ``PrivacyLedger(dir)`` alone is a bare ledger
in ``dir`` with no home and no heads (tools and tests); shops use ``PrivacyLedger.for_data``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fedinterest.common.atomic import atomic_write_bytes, file_lock, private_dir
from fedinterest.common.data.schema import DataError

from .privacy import Phase, PrivacyConfig, PrivacyPlan, PrivacyTerms, epsilon_spent

LEDGER_FILE = "privacy_ledger.jsonl"
LOCK_FILE = "privacy_ledger.lock"
BINDING_FILE = "ledger.json"  # in a state directory: which ledger, in which home, and its head
MEMBERS_FILE = "members"
MERGED_FILE = "merged_into"
SECRET_FILE = "secret.key"
HOME_ENV = "FEDINTEREST_HOME"
FORMAT = "fedinterest-privacy-ledger/2"
GENESIS = "0" * 64
KINDS = ("dp-sgd", "statistics", "replay", "merge")
TAG_BYTES = 16
#: Cached DP releases in a state directory: their presence without a ledger means the ledger was lost.
CACHED_RELEASES = ("taxonomy-*.json", "priors-*.json")


class LedgerError(DataError):
    """A ledger file that cannot be trusted, or a request it cannot take; the message says what to do."""


@dataclass(frozen=True)
class Release:
    """One release the shop made (or reserved), in ledger order."""

    seq: int
    kind: str  # "dp-sgd" (one training round), "statistics", "replay" (an earlier release, repeated), "merge"
    phases: tuple[Phase, ...]
    epsilon: float  # spent after this release
    budget: float  # the budget it was checked against
    server_round: int | None = None
    input_sha256: str = ""  # what the release started from (the global adapter); merge: the ledger merged
    recorded_at: float = 0.0
    replay_of: int | None = None
    delta: float = 0.0  # δ this release spends beyond its Gaussian phases (a thresholded domain selection)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self.phases)


@dataclass(frozen=True)
class LedgerState:
    """The ledger as read from disk: terms, plan and releases since the last reset, and every record."""

    terms: PrivacyTerms | None = None
    plan: PrivacyPlan | None = None
    releases: tuple[Release, ...] = ()
    head: str = GENESIS  # seal of the last record
    seals: tuple[str, ...] = ()  # every record's seal, in order (the heads name one of them)
    budgets: tuple[float, ...] = ()  # budgets raised explicitly since the last reset
    records: tuple[dict, ...] = ()  # every record, resets included (for `ledger show`)

    @property
    def count(self) -> int:
        return len(self.seals)

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
    def recorded_budget(self) -> float | None:
        """The largest budget recorded since the last reset (releases, plan, raises); None before any."""
        values = [r.budget for r in self.releases] + list(self.budgets)
        if self.plan is not None and self.plan.epsilon is not None:
            values.append(float(self.plan.epsilon))
        return max(values) if values else None

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
    """A handle on one ledger; every read goes to the file and checks it against the ledger's heads."""

    def __init__(self, directory: str | Path, heads: Iterable[str | Path] = ()):
        self.dir = Path(directory)
        self.path = self.dir / LEDGER_FILE
        self.heads = tuple(Path(h) for h in heads)

    @classmethod
    def open(cls, state_dir: str | Path) -> "PrivacyLedger":
        """The ledger a state directory points to (``ledger.json``), else a bare ledger in it; checked now."""
        binding = Path(state_dir) / BINDING_FILE
        if binding.is_file():
            bound = _read_json(binding)
            home = Path(bound["home"])
            ledger = cls(home / "ledgers" / bound["ledger"], (binding, home / "heads" / f"{bound['ledger']}.json"))
        else:
            ledger = cls(state_dir)
        ledger.read()
        return ledger

    @classmethod
    def for_data(cls, state_dir: str | Path, users: Iterable, home: str | Path | None = None,
                 reset: bool | str = False) -> "PrivacyLedger":
        """The ledger of the data whose privacy units are ``users``, in ``home``; ``state_dir`` points to it.

        Found (or made, or merged) by the overlap rule of the module docstring, whatever the state or
        working directory. Refused when the state directory points to another home or another
        dataset's ledger, or when the ledger is missing or shorter than a head says. ``reset``:
        record a reset (``--reset-ledger``) first, which also accepts a ledger its heads disagree with
        (the reset record says what they said); a string is a label recorded with it, and a reset with a
        label already recorded is not made again (node config ``reset-ledger``, read at every start).
        """
        home = ledger_home(home)
        state = private_dir(state_dir)
        tags = user_tags(users, home_secret(home))
        if not tags:
            raise LedgerError(f"{state}: the data has no users; there is nothing to keep a privacy ledger for")
        binding = state / BINDING_FILE
        bound = _read_json(binding) if binding.is_file() else None
        if bound is not None and Path(bound["home"]).resolve() != home.resolve():
            raise LedgerError(f"{binding}: this state directory's ledger is in the ledger home {bound['home']}, not "
                              f"{home}; set {HOME_ENV}={bound['home']} (or use a new state directory for a new home)")
        with _home_lock(home / "ledgers.lock"):
            ledger_id = _resolve(home, tags)
        heads = [binding, home / "heads" / f"{ledger_id}.json"]
        if bound is not None and _follow(home, bound["ledger"]) != ledger_id:
            raise LedgerError(f"{binding}: this state directory keeps the state of another dataset's ledger "
                              f"({bound['ledger']}); give this data its own state directory")
        ledger = cls(home / "ledgers" / ledger_id, heads)
        bare = cls(ledger.dir)  # the heads are not checked: the reset records what they said
        label = reset if isinstance(reset, str) else None
        if reset and not (label and label in _reset_labels(bare.read())):
            bare.reset(("--reset-ledger" if label is None else f"reset-ledger={label}") + "".join(
                f"; {p} said {_read_json(p).get('count')} records" for p in heads if p.is_file()), label)
            ledger._write_heads(bare.read())
        cached = [p.name for pattern in CACHED_RELEASES for p in state.glob(pattern)]
        if cached and not ledger.path.exists():
            raise LedgerError(f"{ledger.path}: the privacy ledger is missing, but {state} holds DP releases made "
                              f"under it ({', '.join(sorted(cached))}): the ledger was deleted. It is never reset "
                              "silently: restore it from a backup, or pass --reset-ledger to start over on the record")
        if bound is None and (state / LEDGER_FILE).is_file():
            ledger.absorb(PrivacyLedger(state))  # a state directory's own ledger of an earlier version
        state_now = ledger.read()
        if bound is None or bound["ledger"] != ledger_id:
            ledger._write_heads(state_now)
        return ledger

    # ------------------------------------------------------------------ reading

    def read(self) -> LedgerState:
        """The ledger as it is on disk now, verified record by record and against its heads."""
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
                    f"asks for {terms.describe()}. Terms are fixed once a release is made: keep them, or pass "
                    "--reset-ledger (recorded) only if none of the earlier releases reached anyone"
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

    # ------------------------------------------------------------------ budget and reset

    def check_budget(self, budget: float, raise_budget: bool = False) -> float:
        """Accept ``budget`` if no larger than every one recorded; above them only with ``raise_budget``, recorded."""
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            recorded = state.recorded_budget
            if recorded is None or budget <= recorded * (1 + 1e-9):
                return float(budget)
            if not raise_budget:
                raise LedgerError(_raise_refused(self.path, budget, recorded))
            self._append(state, {"kind": "budget", "budget": {"epsilon": float(budget), "previous": recorded,
                                                               "recorded_at": time.time()}})
            return float(budget)

    def reset(self, reason: str = "--reset-ledger", label: str | None = None) -> None:
        """Record a reset: ε is counted from zero after it; terms and plan are fixed anew. Visible forever."""
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            self._append(state, {"kind": "reset", "reset": {"reason": reason, "label": label,
                                                             "forgotten_epsilon": state.spent,
                                                             "releases": len(state.releases),
                                                             "recorded_at": time.time()}})

    def absorb(self, other: "PrivacyLedger", mark: bool = False) -> None:
        """Merge ``other`` into this ledger: one ``merge`` release carrying its phases and δ since its last reset.

        ``mark``: ``other`` (a sibling in the home) then redirects to this ledger, marked under both
        locks, so no release can land in it after its phases were copied.
        """
        with self._lock(fcntl.LOCK_EX), other._lock(fcntl.LOCK_EX):
            theirs, ours = other._load(), self._load()
            if theirs.terms is not None:
                self._merge(ours, theirs, other)
            if mark:
                atomic_write_bytes(other.dir / MERGED_FILE, self.dir.name.encode(), mode=0o600)

    def _merge(self, ours: LedgerState, theirs: LedgerState, other: "PrivacyLedger") -> None:
        if ours.terms is None:
            ours = self._append(ours, {"kind": "terms", "terms": _asdict(theirs.terms)})
        elif ours.terms != theirs.terms:
            raise LedgerError(f"{self.path} and {other.path} hold releases about the same customers at different "
                              f"terms ({ours.terms.describe()}, {theirs.terms.describe()}); they cannot be "
                              "merged: keep the data of these ledgers apart, or reset one deliberately")
        if not theirs.releases:
            return
        phases = tuple(theirs.history)
        left = ours.accountant_delta - theirs.extra_delta
        # no δ left: spent beyond any budget (the largest finite float: a ledger holds only JSON numbers)
        after = epsilon_spent([*ours.history, *phases], left, ours.terms.accountant) if left > 0 else sys.float_info.max
        budget = max(b for b in (ours.recorded_budget, theirs.recorded_budget) if b is not None)
        release = Release(len(ours.releases) + 1, "merge", phases, after, budget, None,
                          f"{other.dir.name}@{theirs.count}:{theirs.head}", time.time(), delta=theirs.extra_delta)
        self._append(ours, {"kind": "release", "release": _asdict(release)})

    def _write_heads(self, state: LedgerState) -> None:
        head = {"format": FORMAT, "home": str(self.dir.parent.parent), "ledger": self.dir.name,
                "count": state.count, "seal": state.head}
        for path in self.heads:
            atomic_write_bytes(path, json.dumps(head, indent=1).encode(), mode=0o600)

    # ------------------------------------------------------------------ releasing

    def reserve(self, kind: str, phases: list[Phase], budget: float, server_round: int | None = None,
                input_sha256: str = "", delta: float = 0.0) -> Decision:
        """Record a release before it happens, if the ε after it stays within ``budget``.

        Check and record are one step under the lock, against the file as it is now: two
        processes cannot both spend the last of a budget. ``delta``: what the release spends of the
        shop's δ beyond its Gaussian phases; every ε from then on is stated at the δ that is left.
        A budget above every one recorded is declined unless it was raised (``check_budget``).
        """
        if kind not in KINDS[:2]:
            raise ValueError(f"release kind must be one of {KINDS[:2]}, got {kind!r}")
        phases = [(float(s), float(q), int(n)) for s, q, n in phases]
        with self._lock(fcntl.LOCK_EX):
            state = self._load()
            if state.terms is None:
                raise LedgerError(f"{self.path}: fix the privacy terms before the first release")
            now = state.spent
            recorded = state.recorded_budget
            if recorded is not None and budget > recorded * (1 + 1e-9):
                return Decision(False, now, now, budget, _raise_refused(self.path, budget, recorded))
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
        lines = [f"ledger {self.path}"]
        members = self.dir / MEMBERS_FILE
        if members.is_file():
            lines.append(f"the ledger of a dataset of {len(members.read_text().split())} users (keyed tags, "
                         f"in {members})")
        lines += [line for record in state.records for line in _event_lines(record)]
        if state.terms is None:
            return "\n".join(lines + [f"{self.path}: no release yet" + (" since the reset" if state.records else "")])
        budget = budget if budget is not None else state.recorded_budget
        lines += [f"terms: ε {state.terms.describe()}"]
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
        while (self.dir / MERGED_FILE).is_file():  # an absorbed ledger: its records continue in the survivor
            self.dir = self.dir.parent / (self.dir / MERGED_FILE).read_text().strip()
            self.path = self.dir / LEDGER_FILE
        if mode == fcntl.LOCK_SH and not self.path.exists():
            yield  # nothing to read yet; writers take the exclusive lock
            return
        private_dir(self.dir)
        lock = self.dir / LOCK_FILE
        with open(lock, "a+") as handle:
            os.chmod(lock, 0o600)
            fcntl.flock(handle.fileno(), mode)
            try:
                if (self.dir / MERGED_FILE).is_file():  # merged while we waited: follow it
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    with self._lock(mode):
                        yield
                    return
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
            state = LedgerState()
        else:
            try:
                state = _parse(self.path.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LedgerError(
                    f"{self.path}: the privacy ledger is damaged ({exc}). It is never reset automatically: "
                    "restore it from a backup; move it away only if you accept that this shop's spent "
                    "privacy is forgotten."
                ) from None
        for path in self.heads:
            _check_head(self.path, path, self.dir.name, state)
        return state

    def _append(self, state: LedgerState, body: dict) -> LedgerState:
        """Write the file with one more record and move the heads (called under the exclusive lock)."""
        record = {"format": FORMAT, "seq": state.count, **body, "prev": state.head}
        record["sha256"] = _digest(record)
        line = json.dumps(record, sort_keys=True, allow_nan=False)
        old = self.path.read_text() if self.path.exists() else ""
        atomic_write_bytes(self.path, (old + line + "\n").encode(), mode=0o600)
        new = _parse(old + line + "\n")
        self._write_heads(new)
        return new


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


def shop_ledger(state_dir: str | Path, table, home: str | Path | None = None, budget: float | None = None,
                raise_budget: bool = False, reset: bool | str = False) -> PrivacyLedger:
    """The ledger of ``table``'s users (``PrivacyLedger.for_data``), reset and its budget checked as asked."""
    ledger = PrivacyLedger.for_data(state_dir, table.frame["user_id"].astype(str).unique(), home, reset)
    if budget is not None:
        ledger.check_budget(budget, raise_budget)
    return ledger


# ---------------------------------------------------------------------- the home


def ledger_home(home: str | Path | None = None) -> Path:
    """The node's ledger home: ``home``, else ``$FEDINTEREST_HOME``, else ``~/.fedinterest`` (0700)."""
    chosen = home or os.environ.get(HOME_ENV) or Path.home() / ".fedinterest"
    return private_dir(Path(chosen).expanduser())


def home_secret(home: Path) -> bytes:
    """The home's 32-byte secret (0600), made on first use; the key of every user tag and fingerprint."""
    path = home / SECRET_FILE
    with _home_lock(home / "secret.lock"):
        if not path.is_file():
            atomic_write_bytes(path, secrets.token_bytes(32), mode=0o600)
    key = path.read_bytes()
    if len(key) != 32:
        raise LedgerError(f"{path}: not a 32-byte ledger secret; restore it from a backup (without it, no ledger "
                          "of this home can be found by its data)")
    return key


def user_tags(users: Iterable, key: bytes) -> frozenset[str]:
    """Each user id's keyed tag: HMAC-SHA256 under ``key``, truncated to 128 bits (hex); never the id."""
    return frozenset(hmac.new(key, b"user\0" + str(u).encode(), hashlib.sha256).digest()[:TAG_BYTES].hex()
                     for u in users)


def fingerprint(tags: Iterable[str], key: bytes) -> str:
    """The name of a new ledger for a set of user tags: their keyed HMAC (128 bits, hex)."""
    return hmac.new(key, b"dataset\0" + "\n".join(sorted(tags)).encode(), hashlib.sha256).hexdigest()[:32]


def _resolve(home: Path, tags: frozenset[str]) -> str:
    """The id of the ledger for ``tags`` by the overlap rule, members updated (under the home's lock)."""
    root = private_dir(home / "ledgers")
    private_dir(home / "heads")
    overlapping = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not (p / MERGED_FILE).exists()):
        members = _members(directory)
        if members & tags:
            overlapping.append((directory, members))
    if not overlapping:
        directory = private_dir(root / fingerprint(tags, home_secret(home)))
        _write_members(directory, tags | _members(directory))
        return directory.name
    # the survivor: the ledger with the most records, so most state directories keep pointing at it
    overlapping.sort(key=lambda pair: (-_size(pair[0]), pair[0].name))
    survivor, members = overlapping[0]
    target = PrivacyLedger(survivor, [home / "heads" / f"{survivor.name}.json"])
    for directory, theirs in overlapping[1:]:
        target.absorb(PrivacyLedger(directory, [home / "heads" / f"{directory.name}.json"]), mark=True)
        members = members | theirs
    _write_members(survivor, members | tags)
    return survivor.name


def _home_lock(path: Path):
    """``file_lock`` on a lock file only the owner can open (0600)."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    return file_lock(path)


def _follow(home: Path, ledger_id: str) -> str:
    """The ledger ``ledger_id`` continues in (itself unless merged)."""
    seen = set()
    while (home / "ledgers" / ledger_id / MERGED_FILE).is_file() and ledger_id not in seen:
        seen.add(ledger_id)
        ledger_id = (home / "ledgers" / ledger_id / MERGED_FILE).read_text().strip()
    return ledger_id


def _members(directory: Path) -> frozenset[str]:
    path = directory / MEMBERS_FILE
    return frozenset(path.read_text().split()) if path.is_file() else frozenset()


def _write_members(directory: Path, tags: frozenset[str]) -> None:
    if tags != _members(directory):
        atomic_write_bytes(directory / MEMBERS_FILE, ("\n".join(sorted(tags)) + "\n").encode(), mode=0o600)


def _size(directory: Path) -> int:
    path = directory / LEDGER_FILE
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _check_head(ledger: Path, head_path: Path, ledger_id: str, state: LedgerState) -> None:
    """Refuse a ledger that lacks the record ``head_path`` names (truncated, deleted or replaced)."""
    if not head_path.is_file():
        return
    head = _read_json(head_path)
    if head.get("ledger") != ledger_id or not head.get("count"):
        return
    count, seal = int(head["count"]), str(head["seal"])
    what = None
    if not ledger.exists():
        what = f"is missing, but {head_path} records {count} records"
    elif state.count < count:
        what = f"has {state.count} records, but {head_path} records {count}: records were removed from its end"
    elif state.seals[count - 1] != seal:
        what = f"does not hold the record {head_path} names as record {count}: the ledger was replaced"
    if what:
        raise LedgerError(f"{ledger}: the privacy ledger {what}. It is never reset silently: restore the ledger "
                          "from a backup; if you accept that what it recorded is forgotten, pass --reset-ledger, "
                          "which records the reset")


def _reset_labels(state: LedgerState) -> set[str]:
    return {r["reset"]["label"] for r in state.records if r["kind"] == "reset" and r["reset"].get("label")}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LedgerError(f"{path}: unreadable ({exc}); restore it from a backup") from None


def _raise_refused(path: Path, budget: float, recorded: float) -> str:
    return (f"{path}: the budget ε={budget:g} is above ε={recorded:g}, the largest recorded for this data; a raised "
            "budget must be explicit: pass --raise-budget (node config raise-budget=true), which records it in the "
            "ledger, or keep the budget")


def _event_lines(record: dict) -> list[str]:
    """`ledger show`'s lines for a reset, a raised budget or a merge (releases are tabled apart)."""
    when = lambda body: time.strftime("%Y-%m-%d %H:%M", time.gmtime(body.get("recorded_at", 0)))  # noqa: E731
    if record["kind"] == "reset":
        body = record["reset"]
        return [f"record {record['seq'] + 1}: RESET at {when(body)} UTC ({body['reason']}): ε "
                f"{body['forgotten_epsilon']:.3f} over {body['releases']} releases before it is no longer counted"]
    if record["kind"] == "budget":
        body = record["budget"]
        return [f"record {record['seq'] + 1}: budget RAISED at {when(body)} UTC from ε={body['previous']:g} to "
                f"ε={body['epsilon']:g} (--raise-budget)"]
    if record["kind"] == "release" and record["release"]["kind"] == "merge":
        return [f"record {record['seq'] + 1}: MERGED ledger {record['release']['input_sha256'].split('@')[0]} "
                "(customers in common): its releases count here"]
    return []


def _parse(text: str) -> LedgerState:
    """The verified state of a ledger file's text (``ValueError`` naming the first bad record)."""
    if not text.endswith("\n"):
        raise ValueError("the last record is incomplete")
    terms, plan, releases, budgets, head = None, None, [], [], GENESIS
    seals, records = [], []
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
        if kind == "terms" and terms is None and not releases and plan is None:
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
        elif kind == "budget":
            budgets.append(float(record["budget"]["epsilon"]))
        elif kind == "reset":
            terms, plan, releases, budgets = None, None, [], []
        else:
            raise ValueError(f"record {number}: a {kind!r} record is out of place")
        head = seal
        seals.append(seal)
        records.append(record)
    return LedgerState(terms, plan, tuple(releases), head, tuple(seals), tuple(budgets), tuple(records))


def _asdict(value) -> dict:
    from dataclasses import asdict

    return asdict(value)


def _digest(record: dict) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
