"""The interest-migration prediction task: taxonomy, examples, temporal split."""

from .examples import EventArrays, ExampleSet, TimeRange, build_examples, latest_examples
from .catalogue import Catalogue
from .pipeline import TaskData, count_units, default_split, prepare_task, public_split, public_window
from .split import TemporalSplit, temporal_split
from .taxonomy import OTHER, Taxonomy, build_taxonomy, category_token

__all__ = [
    "Catalogue",
    "count_units",
    "default_split",
    "EventArrays",
    "ExampleSet",
    "OTHER",
    "TaskData",
    "Taxonomy",
    "TemporalSplit",
    "TimeRange",
    "build_examples",
    "latest_examples",
    "build_taxonomy",
    "category_token",
    "prepare_task",
    "public_split",
    "public_window",
    "temporal_split",
]
