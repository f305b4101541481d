"""Bad rows are skipped and counted; bad files fail with a clear error and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedinterest.common.data import DataError, LoadOptions, load_events
from formats_fixtures import TAOBAO_ROWS, TMALL_ROWS, write

GOOD = "7,100,5,pv,1511544070"


def load_lines(tmp_path, lines, **opts):
    return load_events(write(tmp_path / "ub.csv", lines), LoadOptions(**opts))


def test_missing_field_skipped_and_counted(tmp_path):
    table = load_lines(tmp_path, [GOOD, "7,,5,pv,1511544070", GOOD, "7,100,5,pv", "", GOOD])
    assert table.report.skipped == {"missing field": 3}
    assert table.report.first_lines["missing field"] == [2, 4, 5]
    assert table.report.rows_kept == 3 and table.report.rows_read == 6


def test_unparsable_timestamp_skipped(tmp_path):
    table = load_lines(tmp_path, [GOOD, "7,100,5,pv,yesterday", "7,100,5,pv,1511544070000", GOOD, GOOD])
    assert table.report.skipped == {"unparsable timestamp": 2}  # text, and milliseconds where seconds belong
    assert table.report.first_lines["unparsable timestamp"] == [2, 3]


def test_unknown_action_skipped(tmp_path):
    table = load_lines(tmp_path, [GOOD, "7,100,5,like,1511544070", GOOD])
    assert table.report.skipped == {"unknown action": 1}
    assert table.report.first_lines["unknown action"] == [2]


def test_first_line_numbers_are_capped_but_counts_are_not(tmp_path):
    lines = [GOOD] * 30 + ["7,100,5,zzz,1511544070"] * 12
    table = load_lines(tmp_path, lines)
    assert table.report.skipped["unknown action"] == 12
    assert table.report.first_lines["unknown action"] == [31, 32, 33, 34, 35]
    assert "skipped 12 rows: unknown action (first at line 31, 32, 33, 34, 35)" in table.report.summary()


def test_empty_file_fails(tmp_path):
    path = write(tmp_path / "empty.csv", [""])
    with pytest.raises(DataError, match=rf"{path}: the file is empty"):
        load_events(path)


def test_header_only_file_fails(tmp_path):
    path = write(tmp_path / "log.csv", TMALL_ROWS[:1])
    with pytest.raises(DataError, match="no data rows"):
        load_events(path)


def test_unknown_layout_fails(tmp_path):
    path = write(tmp_path / "notes.csv", ["hello,world", "this is,not a log"])
    with pytest.raises(DataError, match=rf"{path}: cannot tell its format.*--format"):
        load_events(path)


def test_mostly_bad_file_fails(tmp_path):
    lines = TAOBAO_ROWS[:2] + ["1,2,3,pv,notatime"] * 3
    with pytest.raises(DataError, match=r"3 of 5 rows are bad.*unparsable timestamp, first at line 3"):
        load_lines(tmp_path, lines)


def test_missing_path_and_directory_without_manifest(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_events(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="dataset.json"):
        load_events(tmp_path)


def test_bad_generic_mapping(tmp_path):
    path = write(tmp_path / "log.csv", ["a,b", "1,2"])
    with pytest.raises(DataError, match="unknown canonical fields"):
        load_events(path, LoadOptions(format="generic", columns={"shoe_size": "a"}))
    with pytest.raises(DataError, match="use view, fav, cart or buy"):
        load_events(path, LoadOptions(format="generic", actions={"x": "steal"}))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fedinterest", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "lines, message",
    [
        ([""], "the file is empty"),
        (TAOBAO_ROWS[:1] + ["1,2,3,pv,bad"] * 4, "rows are bad"),
        (["hello,world"], "cannot tell its format"),
    ],
)
def test_cli_exits_2_with_message_and_no_traceback(tmp_path, lines, message):
    path = write(tmp_path / "in.csv", lines)
    result = run_cli("baselines", "--data", str(path))
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_wrong_format_flag(tmp_path):
    path = write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    result = run_cli("baselines", "--data", str(path), "--format", "tmall")
    assert result.returncode == 2 and "does not look like tmall" in result.stderr
    assert "Traceback" not in result.stderr
