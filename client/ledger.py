"""The shop's persistent privacy ledger: what has been spent, and the round it refuses.

One JSON file per shop (``<state>/privacy_ledger.json``), written atomically (temp file, fsync,
rename) and sealed with a sha256 of its content. It holds the fixed ``PrivacyPlan``, the Opacus
accountant history (noise multiplier, sample rate, steps) and the ε after every round. A
restarted process reads it back; a damaged file is an error, never a silent reset.

The ledger is written *before* an update leaves the shop, so a crash can only over-count.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.atomic import atomic_write_text
from common.data.schema import DataError

from .privacy import PrivacyPlan, epsilon_spent

LEDGER_FILE = "privacy_ledger.json"
FORMAT = "fedinterest-privacy-ledger"
VERSION = 1


class LedgerError(DataError):
    """A ledger file that cannot be trusted; the message says what to do."""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    server_round: int | None
    steps: int
    epsilon: float
    budget: float
    recorded_at: float
    input_sha256: str = ""  # the global adapter the round started from


@dataclass(frozen=True)
class Decision:
    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float
    reason: str


@dataclass
class PrivacyLedger:
    path: Path
    plan: PrivacyPlan | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)

    # ------------------------------------------------------------------ persistence

    @classmethod
    def open(cls, state_dir: str | Path) -> "PrivacyLedger":
        """The shop's ledger, read back from disk, or an empty one if there is none yet."""
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            body = {k: v for k, v in data.items() if k != "sha256"}
            if data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if data.get("sha256") != _digest(body):
                raise ValueError("checksum mismatch: the content was changed or damaged")
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')} is not {VERSION}")
            plan = PrivacyPlan.from_dict(body["plan"]) if body["plan"] else None
            history = [(float(s), float(q), int(n)) for s, q, n in body["accountant"]["history"]]
            rounds = [RoundRecord(**r) for r in body["rounds"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(
                f"{path}: the privacy ledger is damaged ({exc}). It is never reset automatically: "
                "restore it from a backup; move it away only if you accept that this shop's spent "
                "privacy is forgotten."
            ) from None
        return cls(path, plan, history, rounds)

    def save(self) -> None:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "plan": self.plan.to_dict() if self.plan else None,
            "accountant": {"mechanism": self.plan.accountant if self.plan else "rdp",
                           "history": [list(h) for h in self.history]},
            "rounds": [asdict(r) for r in self.rounds],
        }
        atomic_write_text(self.path, json.dumps({**body, "sha256": _digest(body)}, indent=1))

    # ------------------------------------------------------------------ accounting

    def set_plan(self, plan: PrivacyPlan) -> None:
        if self.plan is not None:
            raise LedgerError(f"{self.path}: the privacy plan is fixed once made")
        self.plan = plan
        self.save()

    @property
    def spent(self) -> float:
        if not self.plan:
            return 0.0
        return epsilon_spent(self.history, self.plan.delta, self.plan.accountant)

    def _with(self, steps: int) -> list[tuple[float, float, int]]:
        assert self.plan is not None
        phase = (self.plan.noise_multiplier, self.plan.sample_rate, steps)
        if self.history and self.history[-1][:2] == phase[:2]:
            return [*self.history[:-1], (phase[0], phase[1], self.history[-1][2] + steps)]
        return [*self.history, phase]

    def check(self, budget: float, steps: int) -> Decision:
        """Would one more round of ``steps`` steps stay within ``budget``?"""
        if not self.plan:
            raise LedgerError(f"{self.path}: no privacy plan yet")
        now = self.spent
        after = epsilon_spent(self._with(steps), self.plan.delta, self.plan.accountant)
        if after > budget * (1 + 1e-9):
            reason = (f"privacy budget: this round would raise ε from {now:.3f} to {after:.3f}, "
                      f"above the shop's budget {budget:g} (δ={self.plan.delta:.2e}); declining")
            return Decision(False, now, after, budget, reason)
        return Decision(True, now, after, budget, f"ε {now:.3f} -> {after:.3f} of {budget:g}")

    def replayed(self, server_round: int | None, input_sha256: str) -> RoundRecord | None:
        """The record of ``server_round`` if it started from the same global adapter."""
        for record in self.rounds:
            if server_round is not None and record.server_round == server_round and record.input_sha256 == input_sha256:
                return record
        return None

    def commit(self, steps: int, budget: float, server_round: int | None = None,
               input_sha256: str = "") -> RoundRecord:
        """Record a round's steps (before its update leaves the shop)."""
        if not self.plan:
            raise LedgerError(f"{self.path}: no privacy plan yet")
        self.history = self._with(steps)
        record = RoundRecord(
            round=len(self.rounds) + 1,
            server_round=server_round,
            steps=steps,
            epsilon=epsilon_spent(self.history, self.plan.delta, self.plan.accountant),
            budget=budget,
            recorded_at=time.time(),
            input_sha256=input_sha256,
        )
        self.rounds.append(record)
        self.save()
        return record

    # ------------------------------------------------------------------ reporting

    def summary(self, budget: float | None = None) -> str:
        if not self.plan:
            return f"{self.path}: no private round yet"
        budget = budget if budget is not None else (self.rounds[-1].budget if self.rounds else self.plan.epsilon)
        lines = [f"ledger {self.path}", f"plan: {self.plan.describe()}", "",
                 f"{'round':>5}  {'server round':>12}  {'steps':>6}  {'ε after':>8}"]
        for r in self.rounds:
            server = "-" if r.server_round is None else str(r.server_round)
            lines.append(f"{r.round:>5}  {server:>12}  {r.steps:>6}  {r.epsilon:>8.3f}")
        spent = self.spent
        left = max(budget - spent, 0.0)
        lines += ["", f"budget ε={budget:g}, spent ε={spent:.3f}, left ε={left:.3f} (δ={self.plan.delta:.2e})"]
        if self.plan and self.rounds:
            lines.append(f"rounds recorded: {len(self.rounds)} of {self.plan.rounds} planned")
        return "\n".join(lines)


def _digest(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
