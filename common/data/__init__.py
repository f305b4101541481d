"""Event data: the canonical schema, loaders for public log formats, validation."""

from .formats import FORMAT_NAMES
from .load import LoadOptions, load_events
from .schema import ACTION_WEIGHTS, Action, DataError, EventTable, LoadReport

__all__ = [
    "ACTION_WEIGHTS",
    "Action",
    "DataError",
    "EventTable",
    "FORMAT_NAMES",
    "LoadOptions",
    "LoadReport",
    "load_events",
]
