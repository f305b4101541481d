"""The interest scorer: it starts exactly at recency-weighted frequency and learns from there."""

from __future__ import annotations

import numpy as np
import pytest

from fedinterest.common.baselines import RecencyFrequency
from fedinterest.common.config import TaskConfig
from fedinterest.common.task import prepare_task
from fedinterest.common.task.features import BASELINE_FEATURE, FEATURE_NAMES, baseline_scores, history_features
from fedinterest.common.task.priors import Priors
from test_task import hand_examples


def test_history_features_by_hand():
    _, examples = hand_examples()
    features = history_features(examples)
    for i in range(len(examples)):
        history = examples.history_classes(i)
        named = features.classes[i][features.classes[i] >= 0]
        assert sorted(named.tolist()) == sorted(set(history.tolist()))  # one slot per distinct history class
        for slot, cls in enumerate(features.classes[i]):
            if cls < 0:
                continue
            values = dict(zip(FEATURE_NAMES, features.values[i, slot]))
            assert values["is_current"] == float(cls == examples.current[i])
            assert values["is_last"] == float(cls == history[-1])
            assert values["share@1"] == pytest.approx(
                examples.events.weight[examples.hist_start[i]:examples.hist_end[i]][history == cls].sum()
                / examples.events.weight[examples.hist_start[i]:examples.hist_end[i]].sum(), rel=1e-6)
        assert features.values[i, :, BASELINE_FEATURE].sum() == pytest.approx(1.0, rel=1e-6)


def test_the_untrained_model_ranks_exactly_like_recency_weighted_frequency(tiny_shop_table):
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.client.training import predict_proba
    from fedinterest.common.model import LoraSettings
    from fedinterest.common.model.scorer import set_priors

    task = prepare_task(tiny_shop_table, TaskConfig())
    test = task.test.subset(np.arange(min(300, len(task.test))))
    baseline = RecencyFrequency().fit(task.train)
    shared = SharedModel(ModelConfig(backbone="tiny", lora=LoraSettings(layers=(-1,))),
                         task.taxonomy.class_names, "cpu")
    set_priors(shared.model, Priors(baseline.popularity, np.zeros((0, task.taxonomy.n_classes))))
    probs = predict_proba(shared.model, shared.dataset(test, tiny_shop_table.category_names, 48))
    expected = baseline.predict(test)
    order = np.argsort(-probs, axis=1, kind="stable")
    assert np.array_equal(order[:, :5], np.argsort(-expected, axis=1, kind="stable")[:, :5])  # what metrics read
    # the whole order too, except between classes whose evidence differs by less than float32 can
    # tell apart next to the top class (200 events of 0.9 decay reach 1e-9 of the newest)
    evidence = baseline.scores(test)
    along = np.take_along_axis(evidence, order, axis=1)
    assert np.all(np.diff(along, axis=1) <= 1e-6 * evidence.max(axis=1, keepdims=True))
    for row, seen in zip(order, along > 0):  # the classes the history never names: by popularity
        unseen = row[~seen]
        assert np.all(np.diff(baseline.popularity[unseen]) <= 0)
    # and the features alone reproduce the baseline's evidence, up to each example's scale
    assert np.allclose(baseline_scores(history_features(test), task.taxonomy.n_classes)
                       * evidence.sum(axis=1, keepdims=True), evidence, rtol=1e-5, atol=1e-8)


def test_priors_from_noised_flows_are_probabilities():
    flows = np.array([[3.0, -1.0, 0.5], [0.0, 2.0, 2.0], [5.0, -4.0, 1.0]])  # two transition rows, then totals
    priors = Priors.from_flows(flows)
    assert np.all(priors.popularity > 0) and priors.popularity.sum() == pytest.approx(1.0)
    assert priors.transition.shape == (2, 3) and np.allclose(priors.transition.sum(axis=1), 1.0)
    logs = priors.log_matrix()
    assert logs.shape == (3, 3) and np.allclose(logs[2], np.log(priors.popularity))  # no row: popularity
    back = Priors.from_dict(priors.to_dict())
    assert np.array_equal(back.transition, priors.transition)


def test_leave_one_user_out_never_takes_more_than_the_noised_counts_hold(tiny_shop_table):
    """Denoised flows are often zero where a user's own flow sits. Taking the user's flow out of
    such a cell must leave it at zero, like any empty cell: subtracting it anyway pushed every
    training label below the classes nobody moved to, and taught the scorer that transitions
    repel (the history-transition weight went to -6 under DP on the Taobao sample)."""
    from fedinterest.common.stats import label_flows, own_flow_corrections

    task = prepare_task(tiny_shop_table, TaskConfig())
    rows = task.taxonomy.n_classes
    shares = history_features(task.train)
    exact = label_flows(task.train, rows)
    classes, values = own_flow_corrections(task.train, rows, np.zeros_like(exact), shares)
    assert (classes >= 0).any() and np.all(values == 0)  # nothing to take out of empty cells
    classes, values = own_flow_corrections(task.train, rows, exact, shares)
    assert np.all(values[..., 2][classes >= 0] >= 0) and values[..., 2].max() > 0  # exact counts: the own mass
