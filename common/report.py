"""Plain-text tables of metrics, for terminals and closing notes."""

from __future__ import annotations

import math

from .metrics import METRIC_NAMES

COLUMN_TITLES = {
    "acc@1": "acc@1",
    "hr@5": "HR@5",
    "ndcg@5": "NDCG@5",
    "mig_acc@1": "mig acc@1",
    "mig_hr@5": "mig HR@5",
    "mig_ndcg@5": "mig NDCG@5",
    "mig_auroc": "mig AUROC",
    "other_share": "other",
}


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = METRIC_NAMES) -> str:
    """One row per model, one column per metric, three decimals."""
    name_width = max([len("model"), *(len(n) for n in rows)])
    titles = [COLUMN_TITLES.get(c, c) for c in columns]
    widths = [max(len(t), 6) for t in titles]
    lines = [
        "  ".join(["model".ljust(name_width), *(t.rjust(w) for t, w in zip(titles, widths))]),
    ]
    lines.append("-" * len(lines[0]))
    for name, metrics in rows.items():
        cells = [_cell(metrics.get(c), w) for c, w in zip(columns, widths)]
        lines.append("  ".join([name.ljust(name_width), *cells]))
    return "\n".join(lines)


def _cell(value: float | None, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:.3f}".rjust(width)
