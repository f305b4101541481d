"""The federation driver: label space, then rounds of sample → train → secure aggregation → update → evaluate.

``Federation.start(grid)`` is the template: it fixes the label space (the published taxonomy, or
the top K of the shops' noised engagement from one secure statistics round), builds (or resumes)
the global adapter, runs the rounds with ``SecureRound``, applies the server optimizer to the
securely aggregated mean update,
has the shops evaluate it (a secure sum of their noised counts, after the last round and every
``eval-every`` rounds), checkpoints after every round and exports the final adapter. It never
sees one shop's update or metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fedinterest.client.shop import ModelConfig, SharedModel
from fedinterest.common import wire
from fedinterest.common.model import flatten, get_adapter_state, unflatten
from fedinterest.common.secagg import SignatureCache
from fedinterest.common.settings import PendingTask, RoundConfig, TaskSpec
from fedinterest.common.stats import transition_rows
from fedinterest.common.model.scorer import set_priors
from fedinterest.common.task.priors import SELECTION_THRESHOLD, Priors, denoise

from .checkpoint import Checkpoint, config_hash, has_checkpoint
from .export import export_model
from .optimizers import make_optimizer
from .secure_round import ReplyObserver, SecureRound, SecureRoundResult
from .settings import FederationSettings, chosen_task, save_task_spec

log = logging.getLogger("fedinterest.server")

CHECKPOINTS = "checkpoint"
EXPORT = "export"


@dataclass
class FederationResult:
    rounds_run: int
    weights: np.ndarray
    history: list[dict] = field(default_factory=list)
    export_dir: str = ""
    task: TaskSpec | None = None  # the task the run used (its label space included)


class Federation:
    def __init__(self, settings: FederationSettings, observe: ReplyObserver | None = None,
                 progress=print, on_round=None):
        """``observe`` sees every client reply; ``on_round(round, SecureRoundResult, weights)`` each round."""
        self.settings, self.observe, self.progress, self.on_round = settings, observe, progress, on_round
        self.spec: TaskSpec | PendingTask = settings.task_spec()
        self.task: TaskSpec | None = self.spec if isinstance(self.spec, TaskSpec) else None
        self.model_config = ModelConfig(backbone=str(settings["backbone"]), lora=settings.lora,
                                        head_init=str(settings["head-init"]))
        self.hash = config_hash({**settings.fingerprint_values(), "task": self.spec.fingerprint()})
        self.verified = SignatureCache()  # the shops' batch signatures checked so far (one check per batch)
        self.banned: set[int] = set()  # shops shown to have sabotaged a secure round: left out for the rest of the run

    # ------------------------------------------------------------------ template

    def start(self, grid) -> FederationResult:
        settings = self.settings
        nodes = self._wait_for_nodes(grid)
        self.task = self._task(grid, nodes)
        shared = SharedModel.get(self.model_config, self.task.taxonomy.class_names, "cpu")
        set_priors(shared.model, self.task.priors or Priors.uniform(self.task.taxonomy.n_classes))
        template = get_adapter_state(shared.model)
        optimizer = make_optimizer(str(settings["server-optimizer"]), float(settings["server-lr"]))
        weights, history, first = flatten(template), [], 1
        checkpoints = settings.out_dir / CHECKPOINTS
        if settings["resume"]:
            ckpt = Checkpoint.load(checkpoints, expected_hash=self.hash)
            weights, history, first = ckpt.weights.astype(np.float32), ckpt.history, ckpt.round + 1
            optimizer.load_state_dict(ckpt.optimizer)
            self.banned = {int(n) for entry in history for n in entry.get("banned", [])}
            self.progress(f"resuming after round {ckpt.round} from {checkpoints}")
        elif has_checkpoint(checkpoints):
            self.progress(f"note: {checkpoints} holds an earlier run; it is replaced (pass resume=true to continue it)")
        for server_round in range(first, settings.rounds + 1):
            started = time.perf_counter()
            chosen = self._sample(nodes, server_round)
            state = unflatten(weights, template)
            result = self._train_round(grid, chosen, server_round, state)
            if result.mean_update is not None:
                weights = optimizer.step(weights, result.mean_update.astype(np.float32))
            if self.on_round is not None:
                self.on_round(server_round, result, weights)
            evaluation = self._evaluate(grid, nodes, server_round, unflatten(weights, template))
            entry = self._history_entry(server_round, result, evaluation, time.perf_counter() - started)
            entry["banned"] = sorted(self.banned)
            history.append(entry)
            Checkpoint(server_round, weights, self.hash, optimizer.state_dict(), history).save(checkpoints)
            self.progress(self._progress_line(entry))
        export = export_model(shared.model, unflatten(weights, template), self.task.taxonomy,
                              self._model_card(history), settings.out_dir / EXPORT, self.task.priors)
        self.progress(f"exported the global adapter to {export}")
        return FederationResult(len(history), weights, history, str(export), self.task)

    # ------------------------------------------------------------------ steps

    def _wait_for_nodes(self, grid) -> list[int]:
        need = int(self.settings["min-shops"])
        deadline = time.time() + float(self.settings["round-timeout"])
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= need or time.time() > deadline:
                break
            time.sleep(0.5)
        if len(nodes) < need:
            raise RuntimeError(f"only {len(nodes)} shops connected; min-shops={need}")
        self.progress(f"{len(nodes)} shops connected")
        return nodes

    def _task(self, grid, nodes: list[int]) -> TaskSpec:
        """The task with its label space and the scorer's priors, from the shops' private statistics.

        Label space: the published taxonomy, or the top of one secure round of the shops' noised
        engagement. Priors: one secure round of their noised label flows. Each shop charges its
        releases to its own ledger; the server sees only sums. The result is saved in
        ``out-dir/task_spec.json``; a resumed run reuses it rather than asking again.
        """
        path = self.settings.out_dir / "task_spec.json"
        if self.settings["resume"] and (saved := chosen_task(path, self.spec)) is not None:
            self.progress(f"task: {saved.taxonomy.n_classes - 1} categories and priors chosen earlier in this run")
            return saved
        task = self.spec if isinstance(self.spec, TaskSpec) else self._choose_labels(grid, nodes, self.spec)
        if task.priors is None:
            rows, n_classes = transition_rows(task.taxonomy.n_classes), task.taxonomy.n_classes
            flows = self._statistics(grid, nodes, "label-flows", task.to_record_dict(), (rows + 1) * n_classes)
            task = task.with_priors(Priors.from_flows(flows.reshape(rows + 1, n_classes)))
            self.progress(f"priors: popularity and transitions from {rows} interests, from the shops' noised "
                          "label flows (DP, in each shop's ledger)")
        save_task_spec(task, path, chosen_from=self.spec.fingerprint())
        return task

    def _choose_labels(self, grid, nodes: list[int], pending: PendingTask) -> TaskSpec:
        total = self._statistics(grid, nodes, "engagement", pending.to_record_dict(), len(pending.catalogue))
        c = pending.config
        task = pending.with_taxonomy(pending.catalogue.top_k(denoise(total, threshold=SELECTION_THRESHOLD), c.top_k,
                                                             c.coverage, c.max_top_k))
        self.progress(f"label space: top {task.taxonomy.n_classes - 1} of {len(pending.catalogue)} catalogue "
                      "categories by the shops' noised engagement (DP, in each shop's ledger)")
        return task

    def _statistics(self, grid, nodes: list[int], kind: str, record: dict, length: int) -> np.ndarray:
        """The secure sum of every shop's noised ``kind`` vector (a ``query`` round)."""
        s = self.settings
        round_id = wire.STATISTICS_ROUNDS[kind]
        bound = wire.release_bound(int(s["max-shop-customers"]), length)
        config = s.secagg(length, len(nodes), clip=bound, norm=bound)
        content = RecordDict({wire.TASK: ConfigRecord({**record, "query.kind": kind})})
        result = self._secure_round(grid, nodes, config, round_id, wire.QUERY_STAGES, lambda node: content)
        for node, why in {**{n: wire.DECLINE_REASONS.get(c, str(c)) for n, c in result.declined.items()},
                          **result.dropped}.items():
            self.progress(f"  shop {node} left out of the {kind} statistics: {why}")
        if result.weighted_sum is None or result.aborted:
            raise RuntimeError(f"the {kind} statistics could not be summed securely ({result.aborted or 'no sum'}); "
                               "publish a taxonomy and priors (task-spec) or bring more shops")
        return result.weighted_sum

    def _secure_round(self, grid, nodes: list[int], config, round_id: int, stages: tuple[str, ...],
                      content) -> SecureRoundResult:
        """One SecAgg+ round over ``nodes`` less the banned shops; shops it shows to be saboteurs are banned."""
        members = [n for n in nodes if n not in self.banned]
        result = SecureRound(grid, members, config, round_id, float(self.settings["round-timeout"]), self.observe,
                             stages=stages, roster=self.settings.roster, verified=self.verified).run(content)
        for node in result.culprits:
            if node not in self.banned:
                self.banned.add(node)
                self.progress(f"  shop {node} dealt shares that do not rebuild its own secret; it is left out of "
                              "the rest of the run")
        if result.projected:
            self.progress(f"  {stages[0]} round {round_id}: the sum lay outside what honest inputs can give (a "
                          "crafted input); it was projected onto the bound")
        return result

    def _sample(self, nodes: list[int], server_round: int) -> list[int]:
        nodes = [n for n in nodes if n not in self.banned]
        k = max(int(self.settings["min-shops"]), int(round(float(self.settings["fraction-train"]) * len(nodes))))
        if k >= len(nodes):
            return list(nodes)
        rng = np.random.default_rng(None if self.settings.seed < 0 else [self.settings.seed, server_round])
        return sorted(rng.choice(nodes, size=k, replace=False).tolist())

    def _round_config(self, server_round: int) -> RoundConfig:
        s = self.settings
        return RoundConfig(round=server_round, rounds=s.rounds, epsilon_cap=float(s["epsilon-cap"]),
                           eval_per_user=int(s["eval-per-user"]), evaluations=s.evaluations, backbone=str(s["backbone"]), lora=s.lora,
                           training=s.training)

    def _content(self, server_round: int, state) -> RecordDict:
        return RecordDict({
            wire.GLOBAL: wire.adapter_to_record(state),
            wire.CONFIG: ConfigRecord(self._round_config(server_round).to_record_dict()),
            wire.TASK: ConfigRecord(self.task.to_record_dict()),
        })

    def _train_round(self, grid, nodes: list[int], server_round: int, state) -> SecureRoundResult:
        s = self.settings
        config = s.secagg(int(sum(v.size for v in state.values())), len(nodes), clip=float(s["secagg-clip"]),
                          max_weight=int(s["secagg-max-weight"]), norm=float(s["secagg-norm"]))
        result = self._secure_round(grid, nodes, config, server_round, wire.TRAIN_STAGES,
                                    lambda node: self._content(server_round, state))
        for node, code in result.declined.items():
            reason = wire.DECLINE_REASONS.get(code, f"code {code}")
            self.progress(f"  shop {node} declined round {server_round}: {reason}; it is left out")
        for node, why in result.dropped.items():
            self.progress(f"  shop {node} dropped from round {server_round}: {why}")
        if result.aborted:
            self.progress(f"  round {server_round}: secure aggregation aborted ({result.aborted}); no update applied")
        return result

    def _evaluate(self, grid, nodes: list[int], server_round: int, state) -> dict[str, float]:
        """Metrics of ``state`` from one secure round of the shops' noised evaluation counts ({} if none)."""
        from fedinterest.common.evaluation import FIELDS, metrics_from_sum

        if not self.settings.evaluates(server_round):
            return {}
        bound = wire.release_bound(int(self.settings["max-shop-customers"]), len(FIELDS))
        config = self.settings.secagg(len(FIELDS), len(nodes), clip=bound, norm=bound)
        content = self._content(server_round, state)
        result = self._secure_round(grid, nodes, config, wire.secagg_round_id(wire.EVALUATE_STAGES, server_round),
                                    wire.EVALUATE_STAGES, lambda node: content)
        for node, why in {**{n: wire.DECLINE_REASONS.get(c, str(c)) for n, c in result.declined.items()},
                          **result.dropped}.items():
            self.progress(f"  shop {node} left out of the evaluation of round {server_round}: {why}")
        if result.weighted_sum is None or result.aborted:
            self.progress(f"  round {server_round}: no evaluation ({result.aborted or 'no sum'})")
            return {}
        return {**metrics_from_sum(result.weighted_sum), "shops": float(len(result.contributors))}

    # ------------------------------------------------------------------ reporting

    @staticmethod
    def _history_entry(server_round: int, result: SecureRoundResult, evaluation: dict, seconds: float) -> dict:
        trained = [n for n in result.contributors]
        return {
            "round": server_round,
            "contributors": len(trained),
            "declined": {str(n): c for n, c in result.declined.items()},
            "dropped": {str(n): why for n, why in result.dropped.items()},
            "aborted": result.aborted,
            "total_weight": result.total_weight,
            "epsilon": {str(n): 2.0 ** int(m["epsilon_log2"]) for n, m in result.train_metrics.items()
                        if "epsilon_log2" in m},  # each shop's ε spent, as the power of two it stays below
            "privacy_terms": {str(n): t for n, m in result.train_metrics.items()
                              if (t := wire.terms_from_metrics(m)) is not None},
            "eval": evaluation,
            "bytes_up": result.bytes_up,
            "bytes_down": result.bytes_down,
            "seconds": seconds,  # the platform's own log; left out of the exported model card
        }

    @staticmethod
    def _progress_line(entry: dict) -> str:
        ev = entry["eval"]
        eps = max(entry["epsilon"].values()) if entry["epsilon"] else None
        parts = [f"[round {entry['round']}] {entry['contributors']} shops aggregated"]
        if entry["declined"]:
            parts.append(f"{len(entry['declined'])} declined")
        if entry["dropped"]:
            parts.append(f"{len(entry['dropped'])} dropped")
        if eps is not None:
            parts.append(f"ε ≤ {eps:g} per shop")
        if ev:
            parts.append(f"eval loss {ev.get('loss', float('nan')):.3f} acc@1 {ev.get('acc@1', float('nan')):.3f} "
                         f"mig HR@5 {ev.get('mig_hr@5', float('nan')):.3f}")
        parts.append(f"{entry['seconds']:.0f} s, {(entry['bytes_up'] + entry['bytes_down']) / 1e6:.1f} MB on the wire")
        return ", ".join(parts)

    @staticmethod
    def _privacy_summary(history: list[dict]) -> dict:
        """What the shops reported of their guarantee: unit, δ, accountant (each shop's own terms)."""
        terms = {}
        for entry in history:
            terms.update(entry.get("privacy_terms", {}))
        return {"per_shop": terms,
                "note": "ε is per shop's privacy unit; a customer of several shops composes ε over them"}

    def _model_card(self, history: list[dict]) -> dict:
        epsilon: dict[str, float] = {}
        for entry in history:
            epsilon.update(entry["epsilon"])
        return {
            "format": "fedinterest-model-card",
            "backbone": self.settings["backbone"],
            "lora": self.settings.lora.to_dict(),
            "num_labels": self.task.taxonomy.n_classes,
            "label_space": self.task.label_space,
            "priors": "platform statistics: noised, securely summed label flows" if self.task.priors is not None
            else "uniform",
            "privacy": self._privacy_summary(history),
            "task": self.task.config.to_dict(),
            "split": self.task.split.to_dict(),
            "rounds": len(history),
            "epsilon_per_shop": epsilon,
            "final_metrics": history[-1]["eval"] if history else {},
            "history": [{k: v for k, v in entry.items() if k != "seconds"} for entry in history],  # no timings
            "settings": {k: v for k, v in self.settings.values.items()},
        }
