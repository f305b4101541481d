"""Arguments shared by every command that reads event data or cuts examples."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedinterest.common.config import DAY, TaskConfig

if TYPE_CHECKING:  # the data package imports pandas: only the commands that read data pay for it
    from fedinterest.common.data import LoadOptions


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from fedinterest.common.data import FORMAT_NAMES

    group = parser.add_argument_group("data")
    group.add_argument("--data", required=required, metavar="PATH",
                       help="events file (CSV, CSV.gz, Parquet) or dataset directory with dataset.json")
    group.add_argument("--format", choices=("auto", *FORMAT_NAMES), default="auto",
                       help="source format (default: detect from the first line)")
    group.add_argument("--columns", metavar="MAP", type=_mapping,
                       help="generic format column mapping, e.g. user_id=uid,item_id=sku,category=cat,"
                            "action=event,timestamp=ts (also merchant_id, title, category_name)")
    group.add_argument("--actions", metavar="MAP", type=_mapping,
                       help="extra action spellings for the generic format, e.g. ordered=buy,liked=fav")
    group.add_argument("--category-names", metavar="CSV", help="category_id,category_name file")
    group.add_argument("--item-titles", metavar="CSV", help="item_id,title file")
    group.add_argument("--item-properties", metavar="CSV", nargs="+",
                       help="RetailRocket item_properties files (default: item_properties*.csv beside events)")
    group.add_argument("--start", metavar="DATE", help="keep events from this date or time (e.g. 2017-11-25 or "
                       "2017-11-25T00:00+08:00); default: the data's documented window or its robust span")
    group.add_argument("--end", metavar="DATE", help="keep events before this date or time")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    d = TaskConfig()
    group = parser.add_argument_group("task")
    group.add_argument("--top-k", type=int, default=d.top_k,
                       help="taxonomy size before 'other' (default 0: as many categories as cover --coverage)")
    group.add_argument("--coverage", type=float, default=d.coverage,
                       help=f"share of training engagement the taxonomy covers when --top-k is 0 (default {d.coverage:g})")
    group.add_argument("--taxonomy", metavar="JSON", help="use this taxonomy file instead of building one")
    group.add_argument("--history", type=int, default=d.history_events,
                       help=f"events of history per example (default {d.history_events})")
    group.add_argument("--window-days", type=float, default=d.window_seconds / DAY,
                       help="label window after the prediction time, in days (default 1)")
    group.add_argument("--stride-days", type=float, default=d.stride_seconds / DAY,
                       help="spacing of prediction times, in days (default 1)")
    group.add_argument("--min-history", type=int, default=d.min_history,
                       help=f"minimum history events per example (default {d.min_history})")
    group.add_argument("--test-fraction", type=float, default=d.test_fraction,
                       help=f"share of the time span used for testing (default {d.test_fraction})")
    group.add_argument("--val-fraction", type=float, default=d.val_fraction,
                       help=f"share of the time span used for validation (default {d.val_fraction})")
    group.add_argument("--timezone", default="UTC", metavar="ZONE", type=utc_offset,
                       help="time zone of the daily prediction grid: UTC (default), +08:00, UTC+8, -05:00")


def load_options(args: argparse.Namespace) -> LoadOptions:
    from fedinterest.common.data import LoadOptions
    from fedinterest.common.data.window import parse_time

    return LoadOptions(
        format=None if args.format == "auto" else args.format,
        columns=args.columns,
        actions=args.actions,
        category_names=args.category_names,
        item_titles=args.item_titles,
        item_properties=tuple(args.item_properties) if args.item_properties else None,
        start=parse_time(args.start, "--start") if getattr(args, "start", None) else None,
        end=parse_time(args.end, "--end") if getattr(args, "end", None) else None,
    )


def task_config(args: argparse.Namespace) -> TaskConfig:
    return TaskConfig(
        history_events=args.history,
        window_seconds=int(round(args.window_days * DAY)),
        stride_seconds=int(round(args.stride_days * DAY)),
        min_history=args.min_history,
        top_k=args.top_k,
        coverage=args.coverage,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        utc_offset=args.timezone,
    )


def utc_offset(text: str) -> int:
    """``UTC``, ``+08:00``, ``UTC+8``, ``-05:30`` as seconds east of UTC."""
    import re

    match = re.fullmatch(r"(?:UTC|GMT)?\s*(?:([+-])(\d{1,2})(?::?(\d{2}))?)?", text.strip(), flags=re.IGNORECASE)
    if not match or (not match.group(1) and text.strip().upper() not in ("UTC", "GMT", "Z", "")):
        raise argparse.ArgumentTypeError(f"'{text}' is not a time zone; use UTC, +08:00, UTC+8 or -05:00")
    if not match.group(1):
        return 0
    seconds = int(match.group(2)) * 3600 + int(match.group(3) or 0) * 60
    return seconds if match.group(1) == "+" else -seconds


def _mapping(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"'{part}' is not NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


