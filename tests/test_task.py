"""Examples, labels, migration flags, taxonomy, temporal split and text, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedinterest.common.config import DAY, ConfigError, TaskConfig
from fedinterest.common.data import Action, DataError, EventTable
from fedinterest.common.task import (
    EventArrays, Taxonomy, TimeRange, build_examples, build_taxonomy, prepare_task, temporal_split,
)
from fedinterest.common.text import render_examples, render_history

T0 = 1_700_006_400  # a UTC midnight
H = 3600
V, F, C, B = Action.VIEW, Action.FAV, Action.CART, Action.BUY


def ev(user, day, hour, action, category):
    return {"user_id": user, "item_id": f"{category}-item", "category": category, "action": int(action),
            "timestamp": T0 + day * DAY + hour * H}


HAND = [
    # user a: t1 history X,X,cart Y -> current Y; window Y(1) Z(2) -> label Z (migrating)
    ev("a", 0, 10, V, "X"), ev("a", 0, 11, V, "X"), ev("a", 0, 12, C, "Y"),
    ev("a", 1, 9, V, "Y"), ev("a", 1, 10, V, "Z"), ev("a", 1, 11, V, "Z"),
    # t2: current X2 Y4 Z2 -> Y; window W(1) Q(1) tie -> W, engaged first
    ev("a", 2, 8, V, "W"), ev("a", 2, 9, V, "Q"),
    # user b: two events before t1 (too few); t2 history X,Y,fav X -> X; window buy X -> X (staying)
    ev("b", 0, 9, V, "X"), ev("b", 0, 10, V, "Y"), ev("b", 1, 9, F, "X"), ev("b", 2, 10, B, "X"),
    # user c: current tie X2 Y2 -> Y (engaged most recently); label X -> migrating
    ev("c", 0, 9, V, "X"), ev("c", 0, 10, V, "Y"), ev("c", 0, 11, V, "X"), ev("c", 0, 12, V, "Y"),
    ev("c", 1, 9, V, "X"),
]


def hand_examples(**config):
    table = EventTable.from_records(HAND)
    taxonomy = build_taxonomy(table, top_k=10)
    events = EventArrays.from_table(table, taxonomy)
    examples = build_examples(events, TaskConfig(**config), TimeRange(T0, T0 + 3 * DAY))
    name = dict(enumerate(taxonomy.categories))
    rows = {}
    for i in range(len(examples)):
        user = events.user_ids[examples.user[i]]
        day = (examples.t[i] - T0) // DAY
        rows[(user, day)] = (name[examples.label[i]], name[examples.current[i]], bool(examples.migrating[i]))
    return rows, examples


def test_labels_current_interest_and_migration_by_hand():
    rows, _ = hand_examples()
    assert rows == {
        ("a", 1): ("Z", "Y", True),
        ("a", 2): ("W", "Y", True),
        ("b", 2): ("X", "X", False),
        ("c", 1): ("X", "Y", True),
    }


def test_history_and_recent_lengths():
    rows, examples = hand_examples(history_events=2, min_history=2, recent_events=1)
    # with 2 events of history, b qualifies at t1 too; the current interest is the last event
    assert rows[("b", 1)] == ("X", "Y", True)
    assert rows[("a", 2)][1] == "Z"
    assert (examples.hist_end - examples.hist_start <= 2).all()


def test_min_target_and_window():
    rows, _ = hand_examples(window_seconds=2 * DAY)
    # a at t1 sees days 1-2 now: Y1 Z2 W1 Q1 -> still Z; t2's window would end after the data
    assert rows[("a", 1)][0] == "Z"
    assert ("a", 2) not in rows


def test_taxonomy_top_k_other_and_coverage():
    table = EventTable.from_records(HAND)
    taxonomy = build_taxonomy(table, top_k=2)
    # engagement: X = 1+1 +1+2+4 +1+1+1 = 12, Y = 3+1 +1 +1+1 = 7, Z = 2, W = 1, Q = 1
    assert taxonomy.categories == ("X", "Y")
    assert taxonomy.class_names == ("catX", "catY", "other")
    assert taxonomy.classes_of(np.array(["Y", "Q", "X"])).tolist() == [1, 2, 0]
    assert taxonomy.coverage(table) == pytest.approx(19 / 23)


def test_taxonomy_names_round_trip_and_bad_file(tmp_path):
    table = EventTable.from_records(HAND)
    table.category_names.update({"X": "running shoes"})
    taxonomy = build_taxonomy(table, top_k=3)
    assert taxonomy.names[0] == "running shoes"
    taxonomy.save(tmp_path / "tax.json")
    assert Taxonomy.load(tmp_path / "tax.json") == taxonomy
    (tmp_path / "bad.json").write_text('{"categories": ["a"]}')
    with pytest.raises(DataError, match="bad.json.*needs 'categories' and 'names'"):
        Taxonomy.load(tmp_path / "bad.json")


def test_temporal_split_has_no_leakage(synthetic_task):
    task = synthetic_task
    split, events = task.split, task.events
    assert split.start < split.val_start < split.test_start < split.end
    for examples, limit in ((task.train, split.val_start), (task.val, split.test_start)):
        assert len(examples)
        last_target = events.timestamp[examples.target_end - 1]
        assert (last_target < limit).all()  # no target event at or after the split time
        assert (examples.t + task.config.window_seconds <= limit).all()
    assert (task.test.t >= split.test_start).all()
    assert (task.val.t >= split.val_start).all()
    # histories end strictly before the prediction time, targets start at it
    for ex in (task.train, task.test):
        assert (events.timestamp[ex.hist_end - 1] < ex.t).all()
        assert (events.timestamp[ex.hist_end] >= ex.t).all()


def test_taxonomy_comes_from_training_period_only():
    # category "late" appears only after the split: it must not enter the taxonomy
    records = [ev(u, d, 10 + k, V, "early") for u in "abc" for d in range(10) for k in range(3)]
    records += [ev(u, d, 20, B, "late") for u in "abc" for d in range(8, 10)]
    task = prepare_task(EventTable.from_records(records), TaskConfig(test_fraction=0.2, val_fraction=0.0))
    assert task.taxonomy.categories == ("early",)


def test_split_needs_enough_time():
    with pytest.raises(DataError, match="strides"):
        temporal_split(T0, T0 + DAY, TaskConfig())


def test_task_config_validation():
    with pytest.raises(ConfigError, match="min_history"):
        TaskConfig(min_history=0)
    with pytest.raises(ConfigError, match="unknown task setting"):
        TaskConfig.from_dict({"histroy": 3})


def test_text_rendering():
    words = np.array(["running shoes", "sports watch", "cat123"], dtype=object)
    text = render_history(np.array([V, V, C, V, B, V]), np.array([0, 0, 1, 1, 2, 0]), words)
    assert text == "view running shoes x2 | cart sports watch x2 | buy cat123 | view running shoes"
    _, examples = hand_examples()
    texts = render_examples(examples, {"X": "running shoes"})
    # user a at t1: day 0's top is Y (cart 3 > views 2), and Y is the current interest
    assert texts[0] == "view running shoes x2 | cart catY || now catY for 1 day"
    # user a at t2: day 1's top is Z (2 views); the current interest is still Y
    assert texts[1].endswith("| view catZ x2 || now catY for 0 days, before catZ")
