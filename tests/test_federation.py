"""The federation end to end: the real Flower simulation engine, tiny backbone, DP and SecAgg+.

One run of six shops serves most checks: shop 0 arrives with an exhausted privacy ledger, shop 1
raises in round 1 and shop 2 sends a masked vector of the wrong shape in round 2. The rest of
the federation must go on, lose nothing it should keep, and leak nothing it should not.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from fedinterest.client.ledger import PrivacyLedger
from fedinterest.client.privacy import PrivacyTerms
from fedinterest.common import wire
from fedinterest.simulations.runner import prepare, run_federation
from fedinterest.simulations.synthetic import SynthConfig

pytestmark = pytest.mark.long(minutes=1.5)  # of real processes, on 2 cores: scheduled first (conftest)

ROUNDS = 3
SHOPS = 7  # a roster of 7 plans for ⌈0.2 × 7⌉ = 2 colluders: a round of 6 then survives one dropout
SMALL = SynthConfig(shops=SHOPS, users=60 * SHOPS, days=20, seed=5)


def run_config(out, **extra):
    return {"num-server-rounds": ROUNDS, "backbone": "tiny", "out-dir": str(out), "seed": 11, "max-length": 48,
            "batch-size": 16, "max-steps": 6, "eval-per-user": 2, "round-timeout": 600.0, "lr": 0.02,
            "eval-every": 1, **extra}


def faults(message, context, call_next):
    """Test-only client behaviour: shop 1 raises in round 1, shop 2 corrupts its masked vector in round 2."""
    from flwr.app import Array, ArrayRecord

    pid = int(context.node_config["partition-id"])
    kind, server_round = message.metadata.message_type, message.metadata.group_id
    if pid == 1 and kind == wire.TRAIN and server_round == "1":
        raise RuntimeError("shop 1 crashed")
    reply = call_next(message, context)
    if pid == 2 and kind == wire.MASKED_INPUT and server_round == "2" and not reply.has_error():
        vector = reply.content[wire.MASKED][wire.MASKED_ARRAY].numpy()
        reply.content[wire.MASKED] = ArrayRecord({wire.MASKED_ARRAY: Array(vector[:-7].copy())})
    return reply


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    out = tmp_path_factory.mktemp("federation")
    audit_dir = out / "audit"
    os.environ["FEDINTEREST_AUDIT_DIR"] = str(audit_dir)
    os.environ.setdefault("FLWR_HOME", str(out / "flwr-home"))
    prepared = prepare(out / "sim", shops=SHOPS, synth=SMALL, max_train_per_user=2, seed=3)
    # shop 0 spent its whole budget in an earlier federation
    exhausted = PrivacyLedger.open(prepared.node_configs[0]["state-dir"])
    exhausted.fix_terms(PrivacyTerms("user", 1e-4, "prv"))
    assert exhausted.reserve("dp-sgd", [(0.6, 0.5, 40)], budget=100.0).epsilon_after > 8.0
    replies, lines, rounds, weights_after = [], [], {}, {}

    def observe(message_type, node, content):
        replies.append((message_type, node, content))

    def on_round(server_round, result, weights):
        rounds[server_round] = result
        weights_after[server_round] = np.array(weights)

    def progress(line):
        lines.append(line)
        print(line)

    try:
        outcome = run_federation(prepared, run_config(out / "run"), client_mods=(faults,), observe=observe,
                                 on_round=on_round, progress=progress, cpus_per_shop=1.0)
    finally:
        os.environ.pop("FEDINTEREST_AUDIT_DIR", None)
    return {"out": out, "prepared": prepared, "result": outcome.result, "replies": replies, "lines": lines,
            "audit": audit_dir, "rounds": rounds, "weights": weights_after}


def pooled_loss(federation, weights) -> float:
    """Cross-entropy of the adapter ``weights`` on the pooled test set (the simulation's view, no shop's)."""
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.client.training import predict_proba
    from fedinterest.common.model import get_adapter_state, set_adapter_state, unflatten
    from fedinterest.common.model.scorer import set_priors
    from fedinterest.common.task import prepare_task
    from fedinterest.server.settings import FederationSettings

    result, prepared = federation["result"], federation["prepared"]
    spec = result.task
    test = prepare_task(prepared.table, spec.config, taxonomy=spec.taxonomy, split=spec.split).test
    settings = FederationSettings.from_run_config(run_config(federation["out"] / "run"))
    shared = SharedModel(ModelConfig(backbone="tiny", lora=settings.lora), spec.taxonomy.class_names, "cpu")
    set_priors(shared.model, spec.priors)
    set_adapter_state(shared.model, unflatten(weights, get_adapter_state(shared.model)))
    probs = predict_proba(shared.model, shared.dataset(test, prepared.table.category_names, 48))
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(test)), test.label], 1e-12))))


def test_the_run_finishes_and_the_loss_decreases(federation):
    history = federation["result"].history
    assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
    losses = [pooled_loss(federation, federation["weights"][r]) for r in (1, ROUNDS)]
    assert losses[-1] < losses[0], losses
    assert all(h["contributors"] >= 3 for h in history)


def test_every_round_is_evaluated_by_a_noised_secure_sum(federation):
    """The server's metrics come from the shops' noised counts: near the truth, never one shop's figures."""
    from fedinterest.common.evaluation import FIELDS

    history, prepared = federation["result"].history, federation["prepared"]
    # a shop scores only the adapter of an aggregation it took part in: shop 0 never trains (its budget is
    # spent), shop 1 raised in round 1 and shop 2 was dropped from round 2's sum
    assert [entry["eval"]["shops"] for entry in history] == [SHOPS - 2, SHOPS - 2, SHOPS - 1]
    for entry in history:
        evaluation = entry["eval"]
        assert {"acc@1", "hr@5", "mig_hr@5", "loss", "n"} <= set(evaluation)
        assert 0 <= evaluation["hr@5"] <= 1 and 0 <= evaluation["loss"] <= 10
    masked = [c for t, _, c in federation["replies"] if t == wire.EVALUATE_MASKED_INPUT]
    assert len(masked) == sum(entry["eval"]["shops"] for entry in history)
    assert all(len(c[wire.MASKED][wire.MASKED_ARRAY].numpy()) == len(FIELDS) for c in masked)
    scored = {1: [2, 3], 2: [1, 3]}
    for pid in range(1, SHOPS):  # every evaluation is a release in the shop's ledger
        ledger = PrivacyLedger.open(prepared.node_configs[pid]["state-dir"])
        evaluations = [r for r in ledger.releases if r.input_sha256.startswith("evaluation")]
        expected = scored.get(pid, list(range(1, ROUNDS + 1)))
        assert [r.server_round - wire.EVALUATION_ROUND_BASE for r in evaluations] == expected, pid


def test_an_exhausted_shop_is_excluded_with_a_reason(federation):
    history = federation["result"].history
    for entry in history:
        assert list(entry["declined"].values()) == [wire.DECLINE_BUDGET]
    assert any("declined round 1: privacy budget exhausted" in line for line in federation["lines"])


def test_a_raising_client_and_a_wrong_shape_are_dropped_and_the_server_goes_on(federation):
    first, second, third = federation["result"].history
    assert len(first["dropped"]) == 1 and wire.ERROR_CODES[wire.ERROR_INTERNAL] in next(iter(first["dropped"].values()))
    assert first["contributors"] == SHOPS - 2 and first["aborted"] is None
    assert len(second["dropped"]) == 1 and "shape" in next(iter(second["dropped"].values()))
    assert second["contributors"] == SHOPS - 2 and second["aborted"] is None
    assert not third["dropped"] and third["contributors"] == SHOPS - 1


def test_secure_aggregate_is_the_weighted_mean_of_the_plaintext_updates(federation):
    """Round 3 (no faults): what the server decoded equals what the shops computed, within the bound."""
    result = federation["rounds"][ROUNDS]
    updates = [np.load(p) for p in glob.glob(str(federation["audit"] / f"*-round{ROUNDS}.npz"))]
    assert len(updates) == result.contributors.__len__() == SHOPS - 1
    clip = 0.5  # secagg-clip default
    total = sum(int(u["weight"]) for u in updates)
    expected = sum(int(u["weight"]) * np.clip(u["update"], -clip, clip) for u in updates) / total
    assert result.total_weight == total
    from fedinterest.common.secagg import SecAggConfig

    frac_bits = SecAggConfig(vector_length=expected.size, max_clients=SHOPS, clip=clip, max_weight=1000).frac_bits
    bound = len(updates) / (2.0**frac_bits * total)  # the stated bound m+ / (2^f W), per element
    assert np.abs(result.mean_update - expected).max() <= bound * (1 + 1e-6)


def test_wire_audit_only_declared_content_leaves_a_shop(federation):
    replies = federation["replies"]
    assert {t for t, _, _ in replies} == {*wire.TRAIN_STAGES, *wire.QUERY_STAGES, *wire.EVALUATE_STAGES}
    masked = []
    for message_type, _, content in replies:
        problems = wire.audit_reply(message_type, content)
        if message_type == wire.MASKED_INPUT and problems:
            continue  # shop 2's deliberately corrupted vector, already dropped by the server
        assert not problems, problems
        for record in content.values():
            for key, value in record.items():
                assert not isinstance(value, str), f"text in {message_type}.{key}"
                if hasattr(value, "numpy"):
                    assert value.numpy().dtype == np.uint32, f"{message_type}.{key} is not a masked integer vector"
        if message_type == wire.QUERY_MASKED_INPUT:  # masked counts look uniform in Z_2^32
            vector = content[wire.MASKED][wire.MASKED_ARRAY].numpy().astype(np.float64) / 2.0**32
            assert len(vector) > 20 and 0.3 < vector.mean() < 0.7 and vector.std() > 0.2
        if message_type == wire.MASKED_INPUT:
            masked.append(content[wire.MASKED][wire.MASKED_ARRAY].numpy().astype(np.float64))
    plaintext = [np.load(path)["update"] for path in glob.glob(str(federation["audit"] / "*.npz"))]
    assert plaintext and masked
    for vector in masked:
        for update in plaintext:
            n = min(len(vector), len(update))
            assert not np.allclose(vector[:n], update[:n])
            corr = np.corrcoef(vector[:n], update[:n])[0, 1]
            # the mask hides the update: no more correlation than chance allows (5 standard errors)
            assert abs(corr) < max(0.1, 5 / np.sqrt(n)), (corr, n)
    # identifiers on the wire are Flower node ids (SecAgg+ client ids) and nothing else: no user or item ids
    nodes = {node for _, node, _ in replies}
    for message_type, _, content in replies:
        if wire.SECAGG in content:
            for key, value in content[wire.SECAGG].items():
                if key.endswith("_id") and key != "round_id":
                    assert value in nodes, (message_type, key)
                if key.endswith("_ids") or key.endswith("_owners"):
                    assert set(value) <= nodes, (message_type, key)
        if wire.METRICS in content:  # per shop: only whether it took part, and coded terms
            assert message_type in (wire.TRAIN, wire.QUERY, wire.EVALUATE)
            assert set(content[wire.METRICS].keys()) <= set(wire.OPENING_METRICS)
            assert all(float(v).is_integer() for v in content[wire.METRICS].values()), dict(content[wire.METRICS])


def test_a_shop_signs_the_keys_of_its_training_rounds_once(federation):
    """The node keeps its keyring in its context between rounds: one batch signature covers every
    training round it advertised in, each round's advertisement proving its own leaf."""
    ads: dict[int, list[tuple[int, int, bytes]]] = {}
    for message_type, node, content in federation["replies"]:
        if message_type == wire.TRAIN and wire.SECAGG in content:
            record = content[wire.SECAGG]
            ads.setdefault(node, []).append((record["round_id"], record["batch_first_round"], record["signature"]))
    assert sum(len(rounds) == ROUNDS for rounds in ads.values()) >= 3  # the shops that took part in every round
    for rounds in ads.values():
        assert len({signature for _, _, signature in rounds}) == 1
        assert {first for _, first, _ in rounds} == {min(round_id for round_id, _, _ in rounds)}


def test_the_label_space_comes_from_the_noised_sum_and_is_charged_to_every_ledger(federation):
    """The statistics round: each shop reserved one release before any training, the server used the sum."""
    from fedinterest.common.stats import category_engagement
    from fedinterest.common.task import default_split

    result, prepared = federation["result"], federation["prepared"]
    assert result.task.label_space == "dp-top-k"
    priors = result.task.priors  # the scorer's priors, from the second statistics round
    assert priors is not None and len(priors.popularity) == result.task.taxonomy.n_classes
    assert np.allclose(priors.transition.sum(axis=1), 1.0) and len(priors.transition) > 0
    assert any("label space: top" in line for line in federation["lines"])
    for pid in range(1, SHOPS):
        ledger = PrivacyLedger.open(prepared.node_configs[pid]["state-dir"]).read()
        kinds = [r.kind for r in ledger.releases]
        assert kinds[:2] == ["statistics"] * 2 and set(kinds[2:]) == {"dp-sgd", "statistics"}, kinds
        assert all(r.phases[0][1:] == (1.0, 1) for r in ledger.releases[:2])  # Gaussian releases, no subsampling
        assert ledger.plan is not None and ledger.spent <= 8.0
        assert ledger.terms.unit == "user" and ledger.terms.accountant == "prv"
    # the query reply of every shop holds only the declared records, its vector only masked
    queries = [content for t, _, content in federation["replies"] if t == wire.QUERY]
    assert queries and all(not wire.audit_reply(wire.QUERY, c) for c in queries)
    # the chosen label space is the top of the true pooled engagement, up to the noise
    pending_split = default_split(prepared.table, result.task.config)
    truth = category_engagement(prepared.table, prepared.task.catalogue, pending_split.val_start)
    c = result.task.config
    true_top = set(prepared.task.catalogue.top_k(truth, c.top_k, c.coverage, c.max_top_k).categories)
    overlap = len(true_top & set(result.task.taxonomy.categories)) / len(true_top)
    assert overlap > 0.6, overlap


def test_the_exported_adapter_reloads_with_peft_and_predicts_the_same(federation):
    from peft import PeftModel

    from fedinterest.client.shop import ModelConfig, SharedModel, shop_dataset
    from fedinterest.client.training import predict_proba
    from fedinterest.common.model import get_adapter_state, set_adapter_state, unflatten
    from fedinterest.common.model.backbone import resolve_backbone
    from fedinterest.common.model.lora import load_base_model
    from fedinterest.common.task import prepare_task
    from fedinterest.server.settings import FederationSettings, load_task_spec

    result, prepared, out = federation["result"], federation["prepared"], federation["out"]
    spec = load_task_spec(out / "run" / "task_spec.json")
    task = prepare_task(prepared.table, spec.config, taxonomy=spec.taxonomy, split=spec.split)
    test = task.test.subset(np.arange(min(40, len(task.test))))
    settings = FederationSettings.from_run_config(run_config(out / "run"))
    shared = SharedModel(ModelConfig(backbone="tiny", lora=settings.lora), spec.taxonomy.class_names, "cpu")
    set_adapter_state(shared.model, unflatten(result.weights, get_adapter_state(shared.model)))
    data = shop_dataset(test, prepared.table.category_names, shared.tokenizer, 48)
    in_memory = predict_proba(shared.model, data)

    base = load_base_model(resolve_backbone("tiny"), spec.taxonomy.n_classes, torch.device("cpu"))
    reloaded = PeftModel.from_pretrained(base, os.path.join(result.export_dir, "adapter"))
    assert np.allclose(predict_proba(reloaded, data), in_memory, atol=1e-5)


def test_predict_writes_top5_and_migration_probability_per_user(federation, tmp_path):
    import subprocess
    import sys

    import pandas as pd

    result, prepared = federation["result"], federation["prepared"]
    out = tmp_path / "predictions.csv"
    run = subprocess.run([sys.executable, "-m", "fedinterest", "predict", "--adapter", result.export_dir,
                          "--data", str(prepared.data), "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    frame = pd.read_csv(out)
    assert len(frame) > 0.9 * prepared.table.frame["user_id"].nunique()
    assert list(frame.columns[:4]) == ["user_id", "prediction_time", "current_interest", "top1"]
    p = frame[[f"top{k}_p" for k in range(1, 6)]].to_numpy()
    assert (p >= 0).all() and (p <= 1).all() and (np.diff(p, axis=1) <= 1e-9).all()
    assert frame["p_migrate"].between(0, 1).all()
    names = set(json_names(result.export_dir))
    assert set(frame["top1"]) <= names


def json_names(export_dir):
    import json

    data = json.loads((__import__("pathlib").Path(export_dir) / "taxonomy.json").read_text())
    return [*data["names"], data["other"]]
