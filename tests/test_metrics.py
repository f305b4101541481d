"""Metric values and baseline behaviour on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedinterest.common.baselines import Markov, Persistence, Popularity, RecencyFrequency
from fedinterest.common.metrics import auroc, evaluate, hit_rate_at_k, label_ranks, ndcg_at_k
from test_task import hand_examples

SCORES = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
LABELS = np.array([0, 1, 0])


def test_ranks_break_ties_towards_lower_class():
    assert label_ranks(SCORES, LABELS).tolist() == [1, 3, 2]


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([1, 3, 2, 7])
    assert hit_rate_at_k(ranks, 5) == 0.75
    assert hit_rate_at_k(ranks, 2) == 0.5
    expected = (1 + 1 / math.log2(4) + 1 / math.log2(3) + 0) / 4
    assert ndcg_at_k(ranks, 5) == pytest.approx(expected)


@pytest.mark.parametrize(
    "scores, positive, expected",
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1], 0.875),  # a tied pair counts one half
        ([0.5, 0.5], [1, 0], 0.5),
        ([0.9, 0.1], [0, 1], 0.0),
    ],
)
def test_auroc_by_hand(scores, positive, expected):
    assert auroc(np.array(scores), np.array(positive, dtype=bool)) == pytest.approx(expected)


def test_auroc_undefined_with_one_class():
    assert math.isnan(auroc(np.array([0.1, 0.2]), np.array([True, True])))


def test_evaluate_all_and_migrating():
    m = evaluate(SCORES, LABELS, current=np.array([0, 0, 2]))
    assert m["acc@1"] == pytest.approx(1 / 3)
    assert m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 + 0.5 + 1 / math.log2(3)) / 3)
    # migrating: examples 1 and 2 (label != current)
    assert m["n_migrating"] == 2
    assert m["mig_acc@1"] == 0.0
    assert m["mig_ndcg@5"] == pytest.approx((0.5 + 1 / math.log2(3)) / 2)
    # migration score 1 - p(current) = [.5, .9, .4]; positives .9 (beats .5) and .4 (loses)
    assert m["mig_auroc"] == pytest.approx(0.5)


def test_persistence_is_right_exactly_on_staying_examples():
    _, examples = hand_examples()
    probs = Persistence().fit(examples).predict(examples)
    m = evaluate(probs, examples.label, examples.current)
    assert m["mig_acc@1"] == 0.0
    assert m["acc@1"] == pytest.approx(1 - examples.migrating.mean())


def test_popularity_ranks_training_labels():
    _, examples = hand_examples()
    model = Popularity().fit(examples)
    counts = np.bincount(examples.label, minlength=examples.events.n_classes)
    top = model.predict(examples)[0].argmax()
    assert counts[top] == counts.max()


def test_markov_learns_transitions():
    _, examples = hand_examples()
    model = Markov(alpha=0.0).fit(examples)
    # from current Y the training labels were Z, W, X (users a, a, c): each a third
    y = int(examples.current[0])
    row = model.transitions[y]
    for label in examples.label[examples.current == y]:
        assert row[label] == pytest.approx(1 / 3)
    assert row.sum() == pytest.approx(1.0)


def test_recency_frequency_prefers_recent_heavy_actions():
    _, examples = hand_examples()
    scores = RecencyFrequency(decay=0.5).fit(examples).scores(examples)
    # user a at t1: history view X, view X, cart Y -> X: .25 + .5, Y: 3 * 1
    events = examples.events
    first = int(np.flatnonzero(events.user_ids[examples.user] == "a")[0])
    x, y = events.cls[examples.hist_start[first]], events.cls[examples.hist_start[first] + 2]
    assert scores[first, x] == pytest.approx(0.75)
    assert scores[first, y] == pytest.approx(3.0)


def test_a_nan_score_is_never_a_hit():
    nan = np.full((3, 4), np.nan)
    assert label_ranks(nan, np.array([0, 1, 3])).tolist() == [4, 4, 4]
    m = evaluate(nan, np.array([0, 1, 3]), current=np.array([0, 0, 0]))
    assert m["acc@1"] == 0.0 and m["hr@5"] == 1.0 * (4 <= 5)  # 4 classes: last is still within 5
    wide = np.full((2, 10), np.nan)
    wide[1, 2] = 0.3  # one finite score beats every NaN
    m = evaluate(wide, np.array([2, 2]), current=np.array([0, 0]))
    assert m["acc@1"] == 0.5 and m["hr@5"] == 0.5
    assert label_ranks(wide, np.array([2, 2])).tolist() == [10, 1]


def test_other_is_never_a_hit_and_never_takes_a_slot():
    # class 3 is `other`; example 0's label is other, example 1's label is 2 behind a high `other`
    probs = np.array([[0.1, 0.1, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    labels, current = np.array([3, 2]), np.array([0, 0])
    plain = evaluate(probs, labels, current)
    assert plain["acc@1"] == 0.5  # without the rule, predicting `other` scores
    m = evaluate(probs, labels, current, other=3)
    assert m["n"] == 1 and m["other_share"] == 0.5  # the `other` example is left out and reported
    assert m["acc@1"] == 1.0  # `other` no longer ranks ahead of the named label
    assert label_ranks(np.array([[0.1, 0.2, 0.3, -np.inf]]), np.array([2])).tolist() == [1]
