"""Loading event logs into the canonical schema: chunked, validated, with a bad-row report.

``load_events(path)`` takes a CSV/CSV.gz/Parquet file in any supported format, or a dataset
directory with a ``dataset.json`` manifest (what ``fedinterest synth`` writes). Bad rows are
skipped and counted per reason; an empty file, a file of the wrong format, or one that is mostly
bad raises ``DataError`` with the file name and what to do. Rows outside the data's time window
(``common.data.window``) are dropped and reported the same way, with their line numbers.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from .formats import RETAILROCKET, SourceFormat, detect_format, resolve_format
from .schema import CATEGORICAL_COLUMNS, DataError, EventTable, LoadReport, empty_frame
from .window import choose_window

CHUNK_ROWS = 500_000
#: A file where more than this fraction of rows is bad is rejected as a whole.
MAX_BAD_FRACTION = 0.5
NA_VALUES = ["", "NULL", "null", "NaN", "nan", "None", "NA", "N/A"]
MANIFEST = "dataset.json"
_IGNORED = -1
_SKIP_LINE = re.compile(r"Skipping line (\d+)")


@dataclass(frozen=True)
class LoadOptions:
    """How to read one source; ``format=None`` detects it from the first line."""

    format: str | None = None
    columns: dict[str, str] | None = None
    actions: dict[str, str] | None = None
    category_names: str | Path | None = None
    item_titles: str | Path | None = None
    item_properties: tuple[str | Path, ...] | None = None
    chunk_rows: int = CHUNK_ROWS
    max_bad_fraction: float = MAX_BAD_FRACTION
    shop: str | None = None  # in a dataset directory: read only this shop's file (else every shop's)
    start: int | None = None  # keep events from here (Unix seconds); with ``end``: the window by hand
    end: int | None = None  # keep events before here


def load_events(path: str | Path, options: LoadOptions | None = None) -> EventTable:
    """Load ``path`` (file or dataset directory) into an ``EventTable``."""
    options = options or LoadOptions()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_dataset_dir(path, options)
    table = _load_file(path, options)
    if options.category_names:
        table.category_names.update(read_category_names(Path(options.category_names)))
    if options.item_titles:
        table.item_titles.update(read_item_titles(Path(options.item_titles)))
    return table


def _load_file(path: Path, options: LoadOptions, merchant_id: str | None = None) -> EventTable:
    fmt = resolve_format(options.format, options.columns, options.actions)
    parquet = _is_parquet(path)
    first = _parquet_columns(path) if parquet else _first_line_fields(path)
    if fmt is None:
        fmt = detect_format(str(path), first)
    else:
        fmt.check_first_line(str(path), first)

    report = LoadReport(source=str(path), format=fmt.name)
    lookup = _category_lookup(path, options, report) if fmt is RETAILROCKET else None
    chunks = _parquet_chunks(path, options.chunk_rows) if parquet else _csv_chunks(path, fmt, options.chunk_rows, report)
    frames, names, titles = [], {}, {}
    for raw, lines in chunks:
        raw.columns = [str(c).strip().lower() for c in raw.columns]
        frame = canonicalize(raw, fmt, lines, report, lookup)
        if merchant_id is not None:
            frame["merchant_id"] = pd.Categorical([merchant_id] * len(frame))
        frames.append(frame)
        names.update(_chunk_category_names(raw, fmt, names))
        titles.update(_chunk_item_titles(raw, fmt))

    if report.rows_read == 0:
        raise DataError(f"{path}: the file has no data rows; check the path or export again")
    bad = report.rows_skipped
    if bad > options.max_bad_fraction * report.rows_read or report.rows_kept == 0:
        raise DataError(
            f"{path}: {bad:,} of {report.rows_read:,} rows are bad, too many to use "
            f"({_reasons(report)}). Check --format (read as {fmt.name}: {fmt.description})."
        )
    frame = keep_window(concat_frames(frames), fmt, options, report)
    if report.rows_kept == 0:
        raise DataError(f"{path}: no rows inside the time window ({report.notes[-1]}); check --start/--end")
    return EventTable(frame=frame, report=report, category_names=names, item_titles=titles)


def keep_window(frame: pd.DataFrame, fmt: SourceFormat, options: LoadOptions, report: LoadReport) -> pd.DataFrame:
    """The rows inside the time window; the rest are reported as skipped with their line numbers."""
    ts = frame["timestamp"].to_numpy()
    window = choose_window(ts, fmt.window, options.start, options.end, fmt.utc_offset)
    lines = frame.pop("line").to_numpy() if "line" in frame else np.zeros(len(frame), dtype=np.int64)
    if window is None:
        return frame
    report.window = (window.start, window.end, window.how)
    inside = window.inside(ts)
    report.notes.append(f"time window {window.describe()}")
    if inside.all():
        return frame
    report.skip(f"outside the time window {window.describe()}", np.sort(lines[~inside]))
    report.rows_kept -= int((~inside).sum())
    frame = frame[inside].reset_index(drop=True)
    for column in CATEGORICAL_COLUMNS:
        if column in frame and hasattr(frame[column], "cat"):
            frame[column] = frame[column].cat.remove_unused_categories()
    return frame


def canonicalize(
    raw: pd.DataFrame,
    fmt: SourceFormat,
    lines: np.ndarray,
    report: LoadReport,
    category_lookup: "CategoryLookup | None" = None,
) -> pd.DataFrame:
    """Map one raw chunk to canonical rows, recording every skipped row in ``report``."""
    cols = fmt.columns
    absent = [c for c in fmt.raw_required() if c not in raw.columns]
    if absent:
        raise DataError(f"{report.source}: missing column(s) {', '.join(absent)} for format {fmt.name}")
    report.rows_read += len(raw)
    missing = raw[fmt.raw_required()].isna().any(axis=1).to_numpy()
    seconds = fmt.parse_timestamp(raw[cols["timestamp"]]).to_numpy()
    bad_time = np.isnan(seconds) & ~missing
    codes = {k: (_IGNORED if v is None else int(v)) for k, v in fmt.actions.items()}
    action = raw[cols["action"]].astype("string").str.strip().str.lower().map(codes)
    action = action.to_numpy(dtype="float64", na_value=np.nan)
    unknown_action = np.isnan(action) & ~missing & ~bad_time
    ignored = (action == _IGNORED) & ~missing & ~bad_time

    if category_lookup is not None:
        category = category_lookup.categories(raw[cols["item_id"]], seconds)
    else:  # a format without a category column (RetailRocket without properties): item = category
        category = raw[cols.get("category", cols["item_id"])]
    no_category = category.isna().to_numpy() & ~(missing | bad_time | unknown_action | ignored)

    report.skip("missing field", lines[missing])
    report.skip("unparsable timestamp", lines[bad_time])
    report.skip("unknown action", lines[unknown_action])
    report.skip("item has no category", lines[no_category])
    for raw_action, n in raw.loc[ignored, cols["action"]].value_counts().items():
        report.ignore(f"action '{raw_action}' is not an engagement", n)

    keep = ~(missing | bad_time | unknown_action | ignored | no_category)
    report.rows_kept += int(keep.sum())
    frame = pd.DataFrame(
        {
            "user_id": pd.Categorical(raw[cols["user_id"]].to_numpy()[keep]),
            "item_id": pd.Categorical(raw[cols["item_id"]].to_numpy()[keep]),
            "category": pd.Categorical(np.asarray(category)[keep]),
            "action": action[keep].astype(np.int8),
            "timestamp": seconds[keep].astype(np.int64),
            "line": np.asarray(lines)[keep].astype(np.int64),  # for the window report; dropped after
        }
    )
    if "merchant_id" in cols and cols["merchant_id"] in raw.columns:
        frame["merchant_id"] = pd.Categorical(raw[cols["merchant_id"]].to_numpy()[keep])
    return frame


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate canonical chunks, unioning their categorical columns."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    out = {}
    for column in frames[0].columns:
        parts = [f[column] for f in frames if column in f.columns]
        if column in CATEGORICAL_COLUMNS:
            if len(parts) < len(frames):  # e.g. merchant_id on some files only
                parts = [f[column] if column in f.columns else pd.Categorical([None] * len(f)) for f in frames]
            out[column] = union_categoricals([pd.Categorical(p) for p in parts], ignore_order=True)
        else:
            out[column] = np.concatenate([np.asarray(p) for p in parts])
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- raw chunks


def _csv_chunks(
    path: Path, fmt: SourceFormat, chunk_rows: int, report: LoadReport
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Raw string chunks plus the file line number of each row.

    Lines with too many fields are skipped by the parser; they are counted here and the line
    numbers of later rows are corrected for them.
    """
    header = 1 if fmt.has_header else 0
    skipped: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = pd.read_csv(
            path,
            header=0 if fmt.has_header else None,
            names=None if fmt.has_header else list(fmt.header),
            dtype=str,
            keep_default_na=False,
            na_values=NA_VALUES,
            skip_blank_lines=False,
            skipinitialspace=True,
            on_bad_lines="warn",
            chunksize=chunk_rows,
            encoding="utf-8-sig",
            encoding_errors="replace",
        )
        try:
            for raw in reader:
                for w in caught:
                    skipped.extend(int(m) for m in _SKIP_LINE.findall(str(w.message)))
                caught.clear()
                yield raw, _line_numbers(raw.index.to_numpy(), header, skipped)
        except pd.errors.ParserError as exc:
            raise DataError(f"{path}: cannot be parsed as CSV ({exc}); check the file") from None
        for w in caught:
            skipped.extend(int(m) for m in _SKIP_LINE.findall(str(w.message)))
    if skipped:
        report.rows_read += len(skipped)
        report.skip("wrong number of fields", sorted(skipped))


def _line_numbers(rows: np.ndarray, header: int, skipped: list[int]) -> np.ndarray:
    """1-based file line of each 0-based data row, given the lines the parser skipped."""
    first = 1 + header
    s = np.sort(np.asarray(skipped, dtype=np.int64))
    shifted = s - first - np.arange(len(s))
    return rows + first + np.searchsorted(shifted, rows, side="right")


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    import pyarrow.parquet as pq

    start = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        raw = batch.to_pandas().astype("string")
        yield raw, np.arange(start, start + len(raw))
        start += len(raw)


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataError(f"{path}: unreadable Parquet file ({exc})") from None


def _first_line_fields(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    return line.rstrip("\r\n").split(",")
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    raise DataError(f"{path}: the file is empty; check the path or export again")


def _reasons(report: LoadReport) -> str:
    return "; ".join(
        f"{n:,} {reason}, first at line {report.first_lines.get(reason, ['?'])[0]}"
        for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1])
    ) or "no valid rows"


# ----------------------------------------------------------------------------- catalogue data


def _chunk_category_names(raw: pd.DataFrame, fmt: SourceFormat, known: dict[str, str]) -> dict[str, str]:
    """English category names from a name column (REES46 ``category_code``)."""
    column = fmt.category_name_column
    if not column or column not in raw.columns:
        return {}
    pairs = raw[[fmt.columns["category"], column]].dropna().drop_duplicates(fmt.columns["category"])
    return {
        str(c): english_category_name(str(n))
        for c, n in zip(pairs.iloc[:, 0], pairs.iloc[:, 1])
        if str(c) not in known
    }


def _chunk_item_titles(raw: pd.DataFrame, fmt: SourceFormat) -> dict[str, str]:
    column = fmt.extra.get("title")
    if not column or column not in raw.columns:
        return {}
    pairs = raw[[fmt.columns["item_id"], column]].dropna().drop_duplicates(fmt.columns["item_id"])
    return dict(zip(pairs.iloc[:, 0].astype(str), pairs.iloc[:, 1].astype(str)))


def english_category_name(code: str) -> str:
    """``electronics.audio.headphone`` -> ``electronics audio headphone``."""
    return " ".join(code.replace("_", " ").replace(".", " ").split())


def read_category_names(path: Path) -> dict[str, str]:
    """A ``category_id,category_name`` CSV as a dict."""
    frame = _read_small_csv(path, ("category_id", "category_name"))
    return dict(zip(frame["category_id"], frame["category_name"]))


def read_catalogue(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A category list: ``category_id[,category_name]`` CSV (with that header), or one id per line.

    The platform's catalogue: categories, never events. A file with more columns than a category
    list (an events log) is refused, naming what it found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the platform's category list (category_id[,category_name])")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: the category list is empty")
    header = [c.strip().lower() for c in lines[0].split(",")]
    if header[0] == "category_id":
        frame = _read_small_csv(path, ("category_id",))
        if set(frame.columns) - {"category_id", "category_name"}:
            raise DataError(f"{path}: a category list holds category_id and category_name only, found "
                            f"{', '.join(frame.columns)}: an events log is behaviour data, not a catalogue")
        ids = tuple(frame["category_id"].astype(str))
        names = tuple(frame["category_name"].astype(str)) if "category_name" in frame else ("",) * len(ids)
    else:
        if any("," in line for line in lines):
            raise DataError(f"{path}: not a category list (its first line is {lines[0][:80]!r}); use a "
                            "category_id[,category_name] CSV with that header, or one category id per line: "
                            "an events log is behaviour data, not a catalogue")
        ids, names = tuple(lines), ("",) * len(lines)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: a category is listed twice")
    return ids, names


def read_item_titles(path: Path) -> dict[str, str]:
    """An ``item_id,...,title`` CSV as a dict."""
    frame = _read_small_csv(path, ("item_id", "title"))
    return dict(zip(frame["item_id"], frame["title"]))


def _read_small_csv(path: Path, needed: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [c.strip().lower() for c in frame.columns]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise DataError(f"{path}: needs column(s) {', '.join(absent)}; found {', '.join(frame.columns)}")
    return frame


# ----------------------------------------------------------------------------- RetailRocket


class CategoryLookup:
    """Item -> category in effect at a time, from RetailRocket ``item_properties`` rows."""

    def __init__(self, props: pd.DataFrame):
        """``props``: columns item (int64), t (float seconds), category (str)."""
        self.props = props.sort_values("t", kind="stable").reset_index(drop=True)
        self.first = self.props.drop_duplicates("item").set_index("item")["category"]

    @classmethod
    def from_files(cls, paths: list[Path], chunk_rows: int = CHUNK_ROWS) -> "CategoryLookup":
        parts = []
        for path in paths:
            for chunk in pd.read_csv(path, dtype=str, chunksize=chunk_rows, keep_default_na=False):
                chunk.columns = [c.strip().lower() for c in chunk.columns]
                absent = {"timestamp", "itemid", "property", "value"} - set(chunk.columns)
                if absent:
                    raise DataError(
                        f"{path}: not a RetailRocket item_properties file (lacks {', '.join(sorted(absent))})"
                    )
                parts.append(chunk.loc[chunk["property"] == "categoryid", ["itemid", "timestamp", "value"]])
        raw = pd.concat(parts) if parts else pd.DataFrame(columns=["itemid", "timestamp", "value"])
        props = pd.DataFrame(
            {
                "item": pd.to_numeric(raw["itemid"], errors="coerce"),
                "t": pd.to_numeric(raw["timestamp"], errors="coerce") / 1000.0,
                "category": raw["value"].astype(str),
            }
        ).dropna()
        props["item"] = props["item"].astype(np.int64)
        return cls(props)

    def categories(self, item_ids: pd.Series, seconds: np.ndarray) -> pd.Series:
        """The category of each item at each time (its earliest known one before any record)."""
        left = pd.DataFrame({"item": pd.to_numeric(item_ids, errors="coerce").to_numpy(), "t": seconds})
        left["row"] = np.arange(len(left))
        left = left.dropna()
        left["item"] = left["item"].astype(np.int64)
        merged = pd.merge_asof(
            left.sort_values("t", kind="stable"), self.props, on="t", by="item", direction="backward"
        )
        merged["category"] = merged["category"].fillna(merged["item"].map(self.first))
        result = pd.Series([None] * len(item_ids), index=item_ids.index, dtype=object)
        result.iloc[merged["row"].to_numpy()] = merged["category"].to_numpy()
        return result


def _category_lookup(path: Path, options: LoadOptions, report: LoadReport) -> CategoryLookup | None:
    given = [Path(p) for p in options.item_properties or ()]
    found = given or sorted(path.parent.glob("item_properties*.csv"))
    if not found:
        report.notes.append(
            "no item_properties*.csv next to the events file (or --item-properties): "
            "each item is treated as its own category"
        )
        return None
    report.notes.append("categories from " + ", ".join(p.name for p in found))
    return CategoryLookup.from_files(found)


# ----------------------------------------------------------------------------- dataset dirs


def _load_dataset_dir(path: Path, options: LoadOptions) -> EventTable:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"{path}: a directory needs a {MANIFEST} manifest (fedinterest synth writes one); "
            "or pass one events file"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        shops: dict[str, str] = manifest["shops"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: not a valid manifest ({exc}); it needs a 'shops' mapping") from None
    if options.format is None and manifest.get("format"):
        options = LoadOptions(**{**options.__dict__, "format": manifest["format"]})
    if manifest.get("window") and options.start is None and options.end is None:  # the dataset's calendar
        start, end = manifest["window"]
        options = LoadOptions(**{**options.__dict__, "start": int(start), "end": int(end)})
    if options.shop is not None and options.shop in shops:
        shops = {options.shop: shops[options.shop]}
    tables = [_load_file(path / rel, options, merchant_id=shop) for shop, rel in shops.items()]
    report = LoadReport(source=str(path), format=tables[0].report.format if tables else "none")
    for t in tables:
        report.merge(t.report)
    table = EventTable(frame=concat_frames([t.frame for t in tables]), report=report)
    for t in tables:
        table.category_names.update(t.category_names)
        table.item_titles.update(t.item_titles)
    if manifest.get("category_names"):
        table.category_names.update(read_category_names(path / manifest["category_names"]))
    if manifest.get("item_titles"):
        table.item_titles.update(read_item_titles(path / manifest["item_titles"]))
    if manifest.get("catalogue"):  # the dataset's public catalogue: every category, used or not
        categories, names = read_catalogue(path / manifest["catalogue"])
        table.public_categories = categories
        table.category_names.update({c: n for c, n in zip(categories, names) if n})
    return table
