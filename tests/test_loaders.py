"""Each loader on small real-format files: detection, field mapping, timestamps, names."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from fedinterest.common.data import Action, DataError, LoadOptions, load_events
from formats_fixtures import (
    REES46_ROWS, RETAILROCKET_EVENTS, RETAILROCKET_PROPERTIES, TAOBAO_ROWS, TMALL_ROWS, write,
)


def utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def rows(table):
    f = table.frame
    return list(zip(f.user_id.astype(str), f.item_id.astype(str), f.category.astype(str),
                    f.action.tolist(), f.timestamp.tolist()))


def test_taobao_detected_and_mapped(tmp_path):
    table = load_events(write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS))
    assert table.report.format == "taobao"
    assert rows(table) == [
        ("1", "2268318", "2520377", Action.VIEW, 1511544070),
        ("1", "2333346", "2520771", Action.VIEW, 1511561733),
        ("1", "2576651", "149192", Action.FAV, 1511572885),
        ("2", "3830808", "4181361", Action.CART, 1511593493),
        ("2", "4365585", "2520377", Action.BUY, 1511596146),
    ]
    assert table.report.rows_kept == 5 and not table.report.skipped


def test_taobao_gzip(tmp_path):
    path = tmp_path / "UserBehavior.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(TAOBAO_ROWS) + "\n")
    assert len(load_events(path)) == 5


def test_tmall_actions_month_day_and_seller(tmp_path):
    table = load_events(write(tmp_path / "user_log_format1.csv", TMALL_ROWS))
    assert table.report.format == "tmall"
    f = table.frame
    assert f.action.tolist() == [Action.VIEW, Action.CART, Action.BUY, Action.FAV]
    assert f.timestamp.tolist() == [utc(2014, 8, 29), utc(2014, 8, 29), utc(2014, 11, 11), utc(2014, 9, 1)]
    assert f.merchant_id.astype(str).tolist() == ["2882", "2882", "2882", "4605"]
    assert table.has_merchants  # a missing brand_id is not a bad row
    assert table.report.rows_kept == 4


def test_rees46_names_purchase_and_ignored_removals(tmp_path):
    table = load_events(write(tmp_path / "2019-Oct.csv", REES46_ROWS))
    assert table.report.format == "rees46"
    f = table.frame
    assert f.action.tolist() == [Action.VIEW, Action.VIEW, Action.CART, Action.BUY]
    assert f.timestamp.tolist()[0] == utc(2019, 10, 1)
    assert table.report.ignored == {"action 'remove_from_cart' is not an engagement": 1}
    assert not table.report.skipped
    assert table.category_names["2053013555631882655"] == "electronics smartphone"
    assert "2103807459595387724" not in table.category_names  # empty category_code


def test_retailrocket_category_in_effect_at_event_time(tmp_path):
    write(tmp_path / "item_properties_part1.csv", RETAILROCKET_PROPERTIES)
    table = load_events(write(tmp_path / "events.csv", RETAILROCKET_EVENTS))
    assert table.report.format == "retailrocket"
    got = {(u, i, t): c for u, i, c, _, t in rows(table)}
    # item 355908 was in 1016 until 1433222000 s, then 1200
    assert got[("257597", "355908", 1433221332)] == "1016"
    assert got[("111016", "355908", 1433221999)] == "1016"
    assert got[("483717", "355908", 1433222276)] == "1200"
    assert got[("992329", "248676", 1433224214)] == "491"
    assert table.frame.action.tolist().count(Action.BUY) == 1
    # item 999999 has no category record: skipped with a reason, not guessed
    assert table.report.skipped == {"item has no category": 1}
    assert table.report.first_lines["item has no category"] == [6]


def test_retailrocket_without_properties_notes_it(tmp_path):
    table = load_events(write(tmp_path / "events.csv", RETAILROCKET_EVENTS),
                        LoadOptions(max_bad_fraction=0.9))
    assert any("item_properties" in n for n in table.report.notes)


def test_generic_csv_with_column_and_action_mapping(tmp_path):
    path = write(tmp_path / "log.csv", [
        "visitor,sku,cat,what,when,shop",
        "u1,i1,shoes,click,2024-03-01T10:00:00Z,s1",
        "u1,i2,watch,ordered,2024-03-01T11:00:00Z,s1",
        "u2,i1,shoes,addtocart,2024-03-02T09:30:00+00:00,s2",
    ])
    opts = LoadOptions(
        format="generic",
        columns={"user_id": "visitor", "item_id": "sku", "category": "cat", "action": "what",
                 "timestamp": "when", "merchant_id": "shop"},
        actions={"ordered": "buy"},
    )
    table = load_events(path, opts)
    assert table.frame.action.tolist() == [Action.VIEW, Action.BUY, Action.CART]
    assert table.frame.timestamp.tolist() == [utc(2024, 3, 1, 10), utc(2024, 3, 1, 11), utc(2024, 3, 2, 9, 30)]
    assert table.frame.merchant_id.astype(str).tolist() == ["s1", "s1", "s2"]


def test_generic_parquet_canonical_names(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({
        "user_id": [1, 1, 2], "item_id": [10, 11, 10], "category": ["a", "b", "a"],
        "action": ["view", "buy", "fav"], "timestamp": [1700000000, 1700000100, 1700000200],
        "title": ["red shoe", "blue watch", "red shoe"],
    }).to_parquet(path)
    table = load_events(path, LoadOptions(format="generic", columns={"title": "title"}))
    assert rows(table)[1] == ("1", "11", "b", Action.BUY, 1700000100)
    assert table.item_titles == {"10": "red shoe", "11": "blue watch"}
    # detection works for Parquet with canonical columns too
    assert len(load_events(path)) == 3


def test_chunked_read_equals_whole_read(tmp_path):
    lines = [f"{u},{u * 10 + k},{k % 3},{['pv', 'buy'][k % 2]},{1511544070 + 60 * k}"
             for u in range(1, 40) for k in range(7)]
    path = write(tmp_path / "ub.csv", lines)
    whole = load_events(path)
    chunked = load_events(path, LoadOptions(chunk_rows=10))
    assert rows(whole) == rows(chunked)
    assert chunked.frame.user_id.dtype == "category"


def test_dataset_directory_manifest(tmp_path):
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    write_synthetic(tmp_path, SynthConfig(shops=2, users=20, days=6, seed=3))
    table = load_events(tmp_path)
    assert set(table.frame.merchant_id.astype(str)) == {"shop_00", "shop_01"}
    assert "running shoes" in table.category_names.values()
    assert len(table.item_titles) > 0
    # a simulated node reads only its own shop's file
    one = load_events(tmp_path, LoadOptions(shop="shop_01"))
    assert set(one.frame.merchant_id.astype(str)) == {"shop_01"}
    assert len(one) == (table.frame.merchant_id.astype(str) == "shop_01").sum()
    assert one.category_names == table.category_names


@pytest.mark.parametrize("forced", ["tmall", "rees46", "retailrocket"])
def test_forcing_the_wrong_format_fails_clearly(tmp_path, forced):
    path = write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    with pytest.raises(DataError, match=rf"{path}.*does not look like {forced}"):
        load_events(path, LoadOptions(format=forced))


def test_taobao_forced_on_headered_file_fails(tmp_path):
    path = write(tmp_path / "log.csv", TMALL_ROWS)
    with pytest.raises(DataError, match="does not look like taobao"):
        load_events(path, LoadOptions(format="taobao"))


def test_line_numbers_are_file_lines(tmp_path):
    lines = TAOBAO_ROWS[:2] + ["1,2,3,pv,1511544070,extra"] + TAOBAO_ROWS[2:] + ["1,2,3,zap,1511544070"]
    table = load_events(write(tmp_path / "ub.csv", lines))
    assert table.report.first_lines == {"wrong number of fields": [3], "unknown action": [7]}
    assert np.array_equal(table.frame.timestamp.to_numpy()[-1], 1511596146)
