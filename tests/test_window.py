"""Events outside a log's real time window are dropped and reported, never silently kept or lost."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedinterest.common.config import DAY, TaskConfig
from fedinterest.common.data import LoadOptions, load_events
from fedinterest.common.data.window import parse_time, robust_window
from fedinterest.common.task import default_split

WEEK_START = 1511539200  # 2017-11-25 00:00 UTC+8


def taobao_week(tmp_path, outliers: list[int], users: int = 40):
    """A Taobao-layout file: each user active every day of the documented week, plus outlier rows."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        for day in range(9):
            for k in range(4):
                ts = WEEK_START + day * DAY + int(rng.integers(8 * 3600, 22 * 3600))
                rows.append(f"{u},{rng.integers(1, 500)},{rng.integers(1, 12)},pv,{ts}")
    lines = rows[:100] + [f"{users + i},7,3,pv,{ts}" for i, ts in enumerate(outliers)] + rows[100:]
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(rows)


def test_taobao_outliers_are_dropped_with_counts_and_line_numbers(tmp_path):
    september, far_future = 1504224000, 1600000000  # 2017-09-01, 2020-09-13
    path, inside = taobao_week(tmp_path, [september, far_future, WEEK_START - 1])
    table = load_events(path)
    report = table.report
    assert report.rows_read == inside + 3 and report.rows_kept == inside == len(table)
    [(reason, count)] = report.skipped.items()
    assert count == 3 and "outside the time window 2017-11-25 00:00 .. 2017-12-04 00:00" in reason
    assert report.first_lines[reason] == [101, 102, 103]  # file lines of the three outliers
    assert "outside the time window" in report.summary() and "documented" in report.summary()
    assert table.frame["timestamp"].min() >= WEEK_START
    # with the outliers gone, the split has a training period again
    split = default_split(table, TaskConfig(utc_offset=8 * 3600))
    assert split.start == WEEK_START and split.val_start > split.start


def test_a_window_given_by_hand_wins(tmp_path):
    path, _ = taobao_week(tmp_path, [])
    table = load_events(path, LoadOptions(start=parse_time("2017-11-27T00:00+08:00"),
                                          end=parse_time("2017-11-29T00:00+08:00")))
    assert table.frame["timestamp"].min() >= WEEK_START + 2 * DAY
    assert table.frame["timestamp"].max() < WEEK_START + 4 * DAY
    assert "given" in table.report.summary()


def test_robust_span_keeps_a_continuous_log_and_cuts_isolated_days():
    core = np.arange(100 * DAY, 130 * DAY, 3600)
    window = robust_window(np.r_[core, 40 * DAY, 300 * DAY])
    assert (window.start, window.end) == (100 * DAY, 130 * DAY)
    near = robust_window(np.r_[core, 132 * DAY + 5])  # two empty days, then events: still the same log
    assert near.end == 133 * DAY
    assert robust_window(core).inside(core).all()


def test_generic_logs_get_the_robust_span(tmp_path):
    lines = ["user_id,item_id,category,action,timestamp"]
    lines += [f"{u},{i},{i % 5},view,{1_700_000_000 + 3600 * i + u}" for u in range(30) for i in range(200)]
    lines.append("99,1,1,view,1000000000")  # 2001: a clock error
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    table = load_events(path, LoadOptions(format="generic"))
    assert table.report.rows_skipped == 1 and len(table) == 6000
    assert any("robust" in reason for reason in table.report.skipped)


def test_no_label_window_runs_past_the_end_of_the_calendar(synthetic_task):
    split = synthetic_task.split
    last_event = int(synthetic_task.events.timestamp.max())
    assert split.end > last_event  # the dataset's public calendar ends after its last event
    test = synthetic_task.test
    assert (test.t + synthetic_task.config.window_seconds <= split.end).all()


def test_the_split_of_a_private_run_is_the_public_calendar_and_no_customer_moves_it(tiny_shop_table):
    """The review's attack: one extra customer with two late views moved the validation start by three days
    when the split followed the data's span. The public calendar (the dataset's documented or given
    window) does not move; a log without one is refused for a private run, naming --start/--end."""
    import pandas as pd

    from fedinterest.common.data import DataError, EventTable
    from fedinterest.common.task import public_split, temporal_split

    config = TaskConfig()
    split = public_split(tiny_shop_table, config)
    frame = tiny_shop_table.frame
    end = int(frame["timestamp"].max())
    late = pd.DataFrame({"user_id": ["intruder", "intruder"], "item_id": ["1", "1"], "category": ["1000", "1000"],
                         "action": np.array([0, 0], np.int8), "timestamp": np.array([end + 2 * DAY, end + 2 * DAY + 60])})
    grown_frame = pd.concat([frame.astype({c: str for c in ("user_id", "item_id", "category")}), late],
                            ignore_index=True)
    for column in ("user_id", "item_id", "category"):
        grown_frame[column] = pd.Categorical(grown_frame[column])
    grown = EventTable(grown_frame, tiny_shop_table.report, tiny_shop_table.category_names)
    assert public_split(grown, config) == split
    # what the data's own span did: the late views move every cut point
    spans = [temporal_split(int(t.frame["timestamp"].min()), int(t.frame["timestamp"].max()), config)
             for t in (tiny_shop_table, grown)]
    assert spans[0].val_start != spans[1].val_start
    # a robust (read-off-the-data) window is no calendar for a private run
    robust = EventTable(frame, dataclasses.replace(tiny_shop_table.report, window=(0, 10**10, "robust")))
    with pytest.raises(DataError, match="--start and --end"):
        public_split(robust, config)


def test_the_grid_follows_the_time_zone(tiny_shop_table):
    from fedinterest.common.task import prepare_task

    config = TaskConfig(utc_offset=8 * 3600)
    split = default_split(tiny_shop_table, config)
    assert (split.val_start + 8 * 3600) % DAY == 0
    task = prepare_task(tiny_shop_table, config, split=split)
    assert len(task.train) and ((task.train.t + 8 * 3600) % DAY == 0).all()  # midnight in UTC+8


def test_bad_dates_are_clear_errors():
    from fedinterest.common.data import DataError

    with pytest.raises(DataError, match="--start 'yesterday-ish': not a date"):
        parse_time("yesterday-ish", "--start")


def test_robust_span_cuts_outliers_beyond_the_quantile_tail():
    core = np.arange(100 * DAY, 130 * DAY, 600)  # 4,320 events
    stray = np.arange(40 * DAY, 50 * DAY, 86_400 // 2)[:20]  # 0.5% of the events, 50+ days before
    window = robust_window(np.r_[stray, core, 400 * DAY])
    assert (window.start, window.end) == (100 * DAY, 130 * DAY)
    weekly = np.r_[core, core + 40 * DAY]  # a log with a long gap but two big runs keeps both
    assert robust_window(weekly).inside(weekly).all()
