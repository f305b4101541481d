"""Federated evaluation: bounded counts, noised and charged to the ledger, of the federation's own adapter.

The unit tests check the sum's bound and that exact sums give the metrics ``common.metrics``
computes. The attack tests drive the real ClientApp handlers with a scripted malicious server:
it asks a shop to score an adapter of its own choosing, to score one round twice, to score a
round it did not aggregate (an old one, or a future one: 10, 11, 12, 500), or to open a
statistics round under a training round's id; each time the shop refuses, and an evaluation it
does answer is noised and in its ledger.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedinterest.common import wire
from fedinterest.common.evaluation import EXAMPLE_NORM, FIELDS, example_counts, metrics_from_sum, unit_sum
from fedinterest.common.metrics import evaluate
from fedinterest.common.secagg import Identity, Roster, SecAggConfig, SecAggProtocolError, SecAggServer
from tests.secagg_parties import flower_task

RUN = 11


def random_predictions(n, classes, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=n)
    labels, current = rng.integers(0, classes, n), rng.integers(0, classes, n)
    return probs, labels, current


def test_each_unit_moves_the_sum_by_at_most_one():
    probs, labels, current = random_predictions(400, 6, 0)
    users = np.random.default_rng(1).integers(0, 50, 400)
    rows = example_counts(probs, labels, current, other=5)
    assert rows.min() >= 0 and rows.max() <= 1
    total = unit_sum(rows, users)
    for user in np.unique(users):
        without = unit_sum(rows[users != user], users[users != user])
        assert np.linalg.norm(total - without) <= 1 + 1e-9
    # the worst case: one named, migrating example ranked first with the loss at the cap
    worst = np.zeros((1, 6))
    worst[0, 0] = 1.0
    one = example_counts(worst, np.array([0]), np.array([1]), other=5)
    one[0, -1] = 1.0
    assert np.linalg.norm(unit_sum(one, np.array([0]))) == pytest.approx(1.0)
    assert EXAMPLE_NORM == pytest.approx(np.sqrt(len(FIELDS) - 1))


def test_exact_sums_give_the_example_metrics():
    probs, labels, current = random_predictions(300, 7, 2)
    rows = example_counts(probs, labels, current, other=6)
    reference = evaluate(probs, labels, current, other=6)
    shops = np.array_split(np.arange(300), 3)  # three shops, example-level units
    total = sum(unit_sum(rows[s], s) for s in shops)
    got = metrics_from_sum(total)
    for key in ("acc@1", "hr@5", "mig_acc@1", "mig_hr@5", "n", "n_migrating", "other_share"):
        assert got[key] == pytest.approx(reference[key], abs=1e-9), key


def test_noise_never_makes_a_rate_impossible():
    got = metrics_from_sum(np.array([0.3, 3.0, 2.0, -4.0, 0.2, 9.0, 9.0, -1.0]))  # n = 0.3 √7 < 1
    assert "acc@1" not in got and "mig_hr@5" not in got  # fewer than one unit
    got = metrics_from_sum(np.array([40.0, 1.0, 50.0, -3.0, 10.0, 1.0, 2.0, 5.0]))
    assert got["acc@1"] == 1.0 and got["hr@5"] == 0.0 and 0 <= got["loss"] <= 10


# ----------------------------------------------------------------------------- the real ClientApp, attacked


@pytest.fixture
def shop(tmp_path, synthetic_dir):
    """A deployed shop (no seed) on the tiny backbone, its roster, and the federation's starting adapter."""
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.model import get_adapter_state
    from fedinterest.common.secagg.identity import IDENTITY_FILE
    from fedinterest.common.settings import TaskSpec
    from fedinterest.common.task import build_taxonomy, default_split

    table = load_events(synthetic_dir)
    split = default_split(table, TaskConfig())
    spec = TaskSpec(build_taxonomy(table, 20, before=split.val_start), split, TaskConfig())
    state = tmp_path / "state"
    state.mkdir()
    own = Identity.generate()
    own.save(state / IDENTITY_FILE)
    roster = Roster({"victim": own.public_key, "b": Identity.generate().public_key, "c": Identity.generate().public_key})
    roster.save(tmp_path / "roster.json")
    from fedinterest.common.model.backbone import resolve_backbone, weights_sha256

    node_config = {"data-path": str(synthetic_dir), "shop": "shop_02", "state-dir": str(state), "epsilon": 8.0,
                   "max-train-per-user": 1, "roster": str(tmp_path / "roster.json"), "backbone": "tiny",
                   "backbone-sha256": weights_sha256(resolve_backbone("tiny"))}
    model = SharedModel.get(ModelConfig(backbone="tiny"), spec.taxonomy.class_names, "cpu").model
    return {"context": Context(RUN, 7, node_config, RecordDict(), {}), "spec": spec, "roster": roster,
            "start": get_adapter_state(model), "state": state}


def request(shop, stages, server_round, adapter, round_id=None):
    """The opening message of a training or evaluation round, as the server builds it."""
    from fedinterest.common.settings import LocalTraining, RoundConfig

    config = RoundConfig(round=server_round, rounds=3, evaluations=3, eval_per_user=1, backbone="tiny",
                         training=LocalTraining(batch_size=16, physical_batch_size=16, max_length=32, max_steps=2))
    length = sum(v.size for v in adapter.values()) if stages is wire.TRAIN_STAGES else len(FIELDS)
    bound = wire.release_bound(wire.DEFAULT_MAX_SHOP_CUSTOMERS, length)
    secagg = SecAggConfig(vector_length=length, max_clients=3, clip=bound, max_weight=1, colluders=1,
                          norm_bound=bound)
    round_id = wire.secagg_round_id(stages, server_round) if round_id is None else round_id
    setup = SecAggServer(secagg, round_id, [7, 8, 9], RUN, shop["roster"]).setup()
    content = RecordDict({wire.GLOBAL: wire.adapter_to_record(adapter),
                          wire.CONFIG: ConfigRecord(config.to_record_dict()),
                          wire.TASK: ConfigRecord(shop["spec"].to_record_dict()),
                          **wire.secagg_to_records(setup)})
    return Message(content, 7, stages[0])


def foreign(adapter, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in adapter.items()}


def test_a_shop_scores_only_the_adapter_the_federation_goes_on_from(shop):
    from fedinterest.client.app import PENDING, evaluate, train
    from fedinterest.client.ledger import PrivacyLedger
    from fedinterest.client.rounds import claim_aggregated
    from fedinterest.client.shop import EVALUATION

    context, start = shop["context"], shop["start"]
    claim_aggregated(shop["state"], RUN, 1)  # this shop's update went into round 1's sum
    with flower_task(RUN):
        reply = evaluate(request(shop, wire.EVALUATE_STAGES, 1, foreign(start)), context)
        assert not wire.audit_reply(wire.EVALUATE, reply.content)
        noisy = context.state[PENDING]["update"].numpy()
        releases = PrivacyLedger.open(shop["state"]).releases
        assert [r.kind for r in releases][-1] == "statistics" and releases[-1].input_sha256.startswith(EVALUATION)
        # the server scored its own adapter after round 1; round 2 must start from it, not from another
        with pytest.raises(SecAggProtocolError, match="other than the one this shop evaluated"):
            train(request(shop, wire.TRAIN_STAGES, 2, start), context)
        # once per round: the same round cannot be scored again, with any adapter
        with pytest.raises(SecAggProtocolError, match="opened before"):
            evaluate(request(shop, wire.EVALUATE_STAGES, 1, start), context)
    # the answer it did give is noised: σ for three evaluations within 0.1 of ε = 8 is several units
    assert noisy.shape == (len(FIELDS),) and np.abs(noisy).max() > 1.0


def test_a_stale_or_mislabelled_evaluation_is_refused(shop):
    from fedinterest.client.app import evaluate, train
    from fedinterest.client.rounds import claim_aggregated

    context, start = shop["context"], shop["start"]
    with flower_task(RUN):
        with pytest.raises(SecAggProtocolError, match="is not the round"):  # setup for another round
            evaluate(request(shop, wire.EVALUATE_STAGES, 1, start, round_id=wire.EVALUATION_ROUND_BASE + 2), context)
        claim_aggregated(shop["state"], RUN, 1)
        train(request(shop, wire.TRAIN_STAGES, 2, start), context)
        with pytest.raises(SecAggProtocolError, match="trained round 2 since"):  # stale: round 2 began
            evaluate(request(shop, wire.EVALUATE_STAGES, 1, start), context)
        with pytest.raises(SecAggProtocolError, match="last aggregation"):  # round 2 was never aggregated here
            evaluate(request(shop, wire.EVALUATE_STAGES, 2, start), context)
        with pytest.raises(SecAggProtocolError, match="is not the round"):
            train(request(shop, wire.TRAIN_STAGES, 3, start, round_id=2), context)


@pytest.mark.parametrize("future", [10, 11, 12, 500])
def test_a_shop_never_scores_a_round_that_has_not_been_aggregated(shop, future):
    """The review's attack: after training round 9 the server asks for evaluations of rounds 10, 11, 12, 500."""
    from fedinterest.client.app import evaluate
    from fedinterest.client.rounds import claim_aggregated, claim_training

    claim_training(shop["state"], RUN, 9, wire.adapter_digest(shop["start"]))
    claim_aggregated(shop["state"], RUN, 9)
    with flower_task(RUN), pytest.raises(SecAggProtocolError, match="last aggregation it took part in"):
        evaluate(request(shop, wire.EVALUATE_STAGES, future, foreign(shop["start"], future)), shop["context"])


def test_a_statistics_round_cannot_take_a_training_rounds_id(shop):
    """``query`` under the id of training round 5 would burn it (a replay-protected id); it is refused before
    the id is claimed, and round 5 still trains."""
    from fedinterest.client.app import query, train

    record = {**shop["spec"].to_record_dict(), "query.kind": "label-flows"}
    secagg = SecAggConfig(vector_length=4, max_clients=3, clip=100.0, max_weight=1, colluders=1, norm_bound=100.0)
    for round_id, kind in ((5, "label-flows"), (wire.STATISTICS_ROUNDS["engagement"], "label-flows"),
                           (wire.STATISTICS_ROUNDS["label-flows"], "popularity")):
        setup = SecAggServer(secagg, round_id, [7, 8, 9], RUN, shop["roster"]).setup()
        with flower_task(RUN), pytest.raises(Exception, match="is not the round|unknown kind"):
            query(Message(RecordDict({wire.TASK: ConfigRecord({**record, "query.kind": kind}),
                                      **wire.secagg_to_records(setup)}), 7, wire.QUERY), shop["context"])
    with flower_task(RUN):
        train(request(shop, wire.TRAIN_STAGES, 5, shop["start"]), shop["context"])  # round 5's id is unspent


@pytest.mark.parametrize("stages", [wire.TRAIN_STAGES, wire.EVALUATE_STAGES, wire.QUERY_STAGES],
                         ids=["train", "evaluate", "query"])
def test_every_kind_of_round_plans_the_colluders_from_the_shops_roster(shop, stages):
    """Training, evaluation and statistics rounds alike: a setup proposing fewer colluders than ⌈0.2 × 3⌉ = 1 of
    the shop's pinned roster is refused before anything is read or spent, and so is a round of three
    in which one colluder and the server could reach the threshold (t = 2 of 2 with one colluder)."""
    from fedinterest.client.app import evaluate, query, train
    from fedinterest.client.ledger import PrivacyLedger

    handler = {wire.TRAIN: train, wire.EVALUATE: evaluate, wire.QUERY: query}[stages[0]]
    round_id = (wire.STATISTICS_ROUNDS["label-flows"] if stages is wire.QUERY_STAGES
                else wire.secagg_round_id(stages, 1))
    for colluders, refusal in ((0, "colluders=0 is below the 1"), (2, "cannot withstand 2")):
        secagg = SecAggConfig(vector_length=8, max_clients=3, clip=1.0, max_weight=1, colluders=colluders)
        setup = SecAggServer(secagg, round_id, [7, 8, 9], RUN, shop["roster"]).setup()
        with flower_task(RUN):
            message = request(shop, stages if stages is not wire.QUERY_STAGES else wire.EVALUATE_STAGES, 1,
                              shop["start"])
            content = RecordDict({**dict(message.content.items()), **wire.secagg_to_records(setup)})
            if stages is wire.QUERY_STAGES:
                content = RecordDict({wire.TASK: ConfigRecord({**shop["spec"].to_record_dict(),
                                                               "query.kind": "label-flows"}),
                                      **wire.secagg_to_records(setup)})
            with pytest.raises(SecAggProtocolError, match=refusal):
                handler(Message(content, 7, stages[0]), shop["context"])
    assert not PrivacyLedger.open(shop["state"]).releases  # nothing was spent on a refused round
