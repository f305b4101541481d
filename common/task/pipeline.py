"""From an event table to train/validation/test examples under one taxonomy and split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TaskConfig
from ..data.schema import DataError, EventTable
from .examples import EventArrays, ExampleSet, build_examples
from .split import TemporalSplit, temporal_split
from .taxonomy import Taxonomy, build_taxonomy


@dataclass(frozen=True)
class TaskData:
    config: TaskConfig
    taxonomy: Taxonomy
    split: TemporalSplit
    events: EventArrays
    train: ExampleSet
    val: ExampleSet
    test: ExampleSet
    coverage: float

    def summary(self) -> str:
        def part(name: str, ex: ExampleSet) -> str:
            rate = ex.migrating.mean() if len(ex) else 0.0
            return f"{name} {len(ex):,} ({rate:.0%} migrating)"

        return (
            f"examples: {part('train', self.train)}, {part('val', self.val)}, {part('test', self.test)}; "
            f"taxonomy: {self.taxonomy.n_classes - 1} categories + other, "
            f"covering {self.coverage:.1%} of engagement"
        )


def prepare_task(
    table: EventTable,
    config: TaskConfig,
    taxonomy: Taxonomy | None = None,
    split: TemporalSplit | None = None,
    require_examples: bool = True,
) -> TaskData:
    """Split ``table`` in time, build (or apply) the taxonomy from the training period, cut examples.

    ``require_examples=False`` accepts a shop with no training or no test examples (a federated
    shop may hold only recent or only old data).
    """
    source = table.report.source
    if split is None:
        split = default_split(table, config)
    if taxonomy is None:
        taxonomy = build_taxonomy(table, config.top_k, split.val_start, config.coverage, config.max_top_k)
    events = EventArrays.from_table(table, taxonomy)
    train = build_examples(events, config, split.train)
    val = build_examples(events, config, split.val)
    test = build_examples(events, config, split.test)
    if require_examples and (not len(train) or not len(test)):
        raise DataError(
            f"{source}: {len(train)} training and {len(test)} test examples; users need at least "
            f"{config.min_history} events before a prediction time and {config.min_target} after it"
        )
    return TaskData(config, taxonomy, split, events, train, val, test, taxonomy.coverage(table))


def default_split(table: EventTable, config: TaskConfig) -> TemporalSplit:
    """The split of ``table``'s public calendar (see :func:`public_split`), else of its own time span.

    Only non-private uses (baselines, references) may fall back to the data's span: it moves with
    one customer's first or last event.
    """
    if public_window(table) is not None:
        return public_split(table, config)
    frame = table.frame
    if not len(frame):
        raise DataError(f"{table.report.source}: no events left after validation")
    ts = frame["timestamp"].to_numpy()
    return temporal_split(int(ts.min()), int(ts.max()), config, table.report.source)


def public_window(table: EventTable) -> tuple[int, int] | None:
    """The data's calendar when it is public: documented by the dataset, or given by hand or by a manifest."""
    window = table.report.window
    if window is None or window[2] == "robust" or abs(window[0]) >= 2**61 or abs(window[1]) >= 2**61:
        return None
    return window[0], window[1]


def public_split(table: EventTable, config: TaskConfig) -> TemporalSplit:
    """The split of the public calendar: never a customer's first or last event.

    A private run's split dates are published (task spec, model card) and decide every customer's
    examples, so they come from what the dataset documents or the platform sets (``--start`` and
    ``--end``), or the run stops here saying so.
    """
    window = public_window(table)
    if window is None:
        raise DataError(
            f"{table.report.source}: a private run needs a public calendar, and this data has none "
            f"({table.report.window[2] + ' window' if table.report.window else 'no window'} read off the events): "
            "give the platform's calendar with --start and --end (or a dataset manifest's 'window')")
    return temporal_split(window[0], window[1] - 1, config, table.report.source)


def count_units(table: EventTable, config: TaskConfig, split: TemporalSplit, unit: str) -> int:
    """Users (``unit="user"``) or examples with a training example: the same under any taxonomy."""
    train = build_examples(EventArrays.from_table(table, Taxonomy((), ())), config, split.train)
    return int(len(np.unique(train.user))) if unit == "user" else len(train)
