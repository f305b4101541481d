"""Source formats: how each public log layout maps onto the canonical schema.

A ``SourceFormat`` says which raw columns hold the canonical fields, how its timestamps and
actions are spelled, and whether a first line looks like it. Loading itself (chunks, bad-row
accounting) lives in ``load``; the formats here are configuration plus small pure hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from . import timestamps
from .schema import Action, DataError

#: Raw action spelling -> Action; ``None`` marks a known action that is deliberately ignored.
ActionMap = dict[str, "Action | None"]

GENERIC_ACTIONS: ActionMap = {
    **{w: Action.VIEW for w in ("view", "pv", "click", "detail", "page_view", "0")},
    **{w: Action.FAV for w in ("fav", "favorite", "favourite", "like", "wishlist")},
    **{w: Action.CART for w in ("cart", "addtocart", "add_to_cart")},
    **{w: Action.BUY for w in ("buy", "purchase", "transaction", "order")},
}


@dataclass(frozen=True)
class SourceFormat:
    """One raw layout.

    ``columns`` maps canonical field -> raw column. ``header`` is the raw column list in file
    order; ``has_header`` says whether files carry it as their first line.
    """

    name: str
    description: str
    header: tuple[str, ...]
    has_header: bool
    columns: dict[str, str]
    actions: ActionMap
    parse_timestamp: Callable[[pd.Series], pd.Series]
    category_name_column: str | None = None
    example: str = ""
    required: tuple[str, ...] = ("user_id", "item_id", "category", "action", "timestamp")
    extra: dict[str, str] = field(default_factory=dict)
    window: tuple[int, int] | None = None  # the period the dataset documents, [start, end) Unix seconds
    utc_offset: int = 0  # the source's local time zone (seconds east of UTC): its days start there

    def raw_required(self) -> list[str]:
        return [self.columns[c] for c in self.required if c in self.columns]

    def looks_like(self, first_fields: list[str]) -> bool:
        """Whether a file whose first line splits into ``first_fields`` is in this format."""
        fields = [f.strip().lower() for f in first_fields]
        if self.has_header:
            return set(self.header) <= set(fields)
        return len(fields) == len(self.header) and _headerless_row_ok(self, fields)

    def check_first_line(self, source: str, first_fields: list[str]) -> None:
        """Raise a DataError naming ``source`` when its first line cannot be this format."""
        if self.looks_like(first_fields):
            return
        shown = ",".join(first_fields)[:120]
        if self.has_header:
            missing = sorted(set(self.header) - {f.strip().lower() for f in first_fields})
            raise DataError(
                f"{source}: does not look like {self.name} ({self.description}): its header "
                f"lacks {', '.join(missing)}; first line is '{shown}'. Check --format."
            )
        raise DataError(
            f"{source}: does not look like {self.name} ({self.description}), e.g. "
            f"'{self.example}'; first line is '{shown}'. Check --format."
        )


def _headerless_row_ok(fmt: SourceFormat, fields: list[str]) -> bool:
    row = dict(zip(fmt.header, fields))
    action_ok = row[fmt.columns["action"]] in fmt.actions
    ts = fmt.parse_timestamp(pd.Series([row[fmt.columns["timestamp"]]]))
    return action_ok and bool(ts.notna().all())


TAOBAO = SourceFormat(
    name="taobao",
    description="Taobao UserBehavior CSV without header: user_id,item_id,category_id,behavior_type,timestamp",
    header=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    has_header=False,
    columns={
        "user_id": "user_id",
        "item_id": "item_id",
        "category": "category_id",
        "action": "behavior_type",
        "timestamp": "timestamp",
    },
    actions={"pv": Action.VIEW, "fav": Action.FAV, "cart": Action.CART, "buy": Action.BUY},
    parse_timestamp=timestamps.unix_seconds,
    example="1,2268318,2520377,pv,1511544070",
    window=(1511539200, 1512316800),  # 2017-11-25 00:00 .. 2017-12-04 00:00, UTC+8 (the dataset's documentation)
    utc_offset=8 * 3600,
)

TMALL = SourceFormat(
    name="tmall",
    description="Tmall IJCAI-15 user_log_format1.csv: user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    header=("user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type"),
    has_header=True,
    columns={
        "user_id": "user_id",
        "item_id": "item_id",
        "category": "cat_id",
        "merchant_id": "seller_id",
        "action": "action_type",
        "timestamp": "time_stamp",
    },
    actions={"0": Action.VIEW, "1": Action.CART, "2": Action.BUY, "3": Action.FAV},
    parse_timestamp=lambda raw: timestamps.month_day(raw, year=2014),
    example="328862,323294,833,2882,2661,0829,0",
    window=(1399766400, 1415750400),  # 2014-05-11 .. 2014-11-12: six months up to Double 11 (dates only)
)

REES46 = SourceFormat(
    name="rees46",
    description="REES46 eCommerce events: event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
    header=(
        "event_time", "event_type", "product_id", "category_id", "category_code",
        "brand", "price", "user_id", "user_session",
    ),
    has_header=True,
    columns={
        "user_id": "user_id",
        "item_id": "product_id",
        "category": "category_id",
        "action": "event_type",
        "timestamp": "event_time",
    },
    actions={
        "view": Action.VIEW,
        "cart": Action.CART,
        "purchase": Action.BUY,
        "remove_from_cart": None,
    },
    parse_timestamp=lambda raw: timestamps.datetime_text(raw, "%Y-%m-%d %H:%M:%S UTC"),
    category_name_column="category_code",
    example="2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-...",
)

RETAILROCKET = SourceFormat(
    name="retailrocket",
    description="RetailRocket events.csv: timestamp,visitorid,event,itemid,transactionid (categories from item_properties*.csv)",
    header=("timestamp", "visitorid", "event", "itemid", "transactionid"),
    has_header=True,
    columns={
        "user_id": "visitorid",
        "item_id": "itemid",
        "action": "event",
        "timestamp": "timestamp",
    },
    actions={"view": Action.VIEW, "addtocart": Action.CART, "transaction": Action.BUY},
    parse_timestamp=timestamps.unix_millis,
    required=("user_id", "item_id", "action", "timestamp"),
    example="1433221332117,257597,view,355908,",
)

CANONICAL_COLUMNS = ("user_id", "item_id", "category", "action", "timestamp")


def generic_format(
    columns: dict[str, str] | None = None,
    actions: dict[str, str] | None = None,
) -> SourceFormat:
    """A CSV/Parquet layout given by a column mapping (canonical name -> raw column).

    ``actions`` adds spellings (raw value -> view|fav|cart|buy) to the generic synonyms.
    """
    mapping = {c: c for c in CANONICAL_COLUMNS}
    mapping.update(columns or {})
    unknown = set(mapping) - set(CANONICAL_COLUMNS) - {"merchant_id", "title", "category_name"}
    if unknown:
        raise DataError(
            f"--columns names unknown canonical fields {sorted(unknown)}; use user_id, item_id, "
            "category, action, timestamp, merchant_id, title, category_name"
        )
    action_map: ActionMap = dict(GENERIC_ACTIONS)
    for raw, word in (actions or {}).items():
        try:
            action_map[raw.strip().lower()] = Action[word.strip().upper()]
        except KeyError:
            raise DataError(f"--actions maps '{raw}' to '{word}'; use view, fav, cart or buy") from None
    header = tuple(mapping[c] for c in CANONICAL_COLUMNS)
    columns_out = {k: v for k, v in mapping.items() if k not in ("title", "category_name")}
    return SourceFormat(
        name="generic",
        description="CSV or Parquet with columns " + ", ".join(f"{k}={v}" for k, v in mapping.items()),
        header=tuple(h.lower() for h in header),
        has_header=True,
        columns=columns_out,
        actions=action_map,
        parse_timestamp=timestamps.any_timestamp,
        category_name_column=mapping.get("category_name"),
        extra={k: mapping[k] for k in ("title",) if k in mapping},
    )


NAMED_FORMATS: dict[str, SourceFormat] = {f.name: f for f in (TAOBAO, TMALL, REES46, RETAILROCKET)}
FORMAT_NAMES: tuple[str, ...] = (*NAMED_FORMATS, "generic")


def detect_format(source: str, first_fields: list[str]) -> SourceFormat:
    """The format whose header (or headerless row shape) matches the first line."""
    for fmt in (*NAMED_FORMATS.values(), generic_format()):
        if fmt.looks_like(first_fields):
            return fmt
    shown = ",".join(first_fields)[:120]
    raise DataError(
        f"{source}: cannot tell its format from the first line '{shown}'. Pass --format "
        f"({', '.join(FORMAT_NAMES)}); for your own layout use --format generic with "
        "--columns user_id=...,item_id=...,category=...,action=...,timestamp=..."
    )


def resolve_format(
    name: str | None,
    columns: dict[str, str] | None = None,
    actions: dict[str, str] | None = None,
) -> SourceFormat | None:
    """The format called ``name`` (None: detect later)."""
    if name is None or name == "auto":
        return generic_format(columns, actions) if columns else None
    if name == "generic":
        return generic_format(columns, actions)
    try:
        return NAMED_FORMATS[name]
    except KeyError:
        raise DataError(f"unknown --format '{name}'; use one of {', '.join(FORMAT_NAMES)}") from None
