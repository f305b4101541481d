"""The privacy-utility trade-off, measured: a grid of full federated simulations, summarised and plotted.

Each point of the grid (ε, unit, shops, rounds, shop-size skew α, seed) is one ``fedinterest
simulate`` run, DP and SecAgg+ included, on the same data and split. Points run as Ray tasks,
on a local Ray instance or an existing cluster (``ray_address``); each task runs the simulation
in a child process, which starts its own Flower simulation engine. A finished point is kept in
``<out>/points/<key>.json`` and never run again, so an interrupted sweep continues where it
stopped, and a repeated one returns at once. The frozen-prefix encodings of the shops' examples
are computed once per dataset and split and kept in ``<out>/cache`` for every other point
(``common.model.prefix``); on a multi-node cluster ``<out>`` must be a shared directory.

``summarise`` turns the rows into mean ± standard error over seeds per ε, and a recommendation
per shop count and unit: the smallest ε within ``tolerance`` of the non-private federation, and
the smallest ε that beats the best baseline with 95% confidence.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fedinterest.common.atomic import atomic_write_json, atomic_write_text
from fedinterest.common.config import ConfigError
from fedinterest.common.model.prefix import CACHE_ENV

METRICS = ("mig_hr@5", "hr@5", "acc@1", "mig_acc@1")
POINTS = "points"


class SweepFailed(RuntimeError):
    """Some points failed; the message names each with the end of its log (the others are kept)."""


@dataclass(frozen=True)
class Point:
    """One simulation of the grid; ``epsilon`` is ``inf`` for the non-private federation."""

    epsilon: float
    unit: str
    shops: int
    rounds: int
    alpha: float
    seed: int

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def key(self) -> str:
        eps = f"{self.epsilon:g}" if self.private else "inf"
        return f"eps{eps}-{self.unit}-shops{self.shops}-r{self.rounds}-a{self.alpha:g}-seed{self.seed}"

    def arguments(self) -> list[str]:
        """This point's ``simulate`` arguments."""
        privacy = ["--epsilon", repr(self.epsilon)] if self.private else ["--non-private"]
        return [*privacy, "--unit", self.unit, "--shops", str(self.shops), "--rounds", str(self.rounds),
                "--alpha", repr(self.alpha), "--seed", str(self.seed)]


def grid(epsilons, units, shops, rounds, alphas, seeds: int) -> list[Point]:
    """Every combination, seeds innermost: the points a sweep runs."""
    return [Point(float(e), u, int(s), int(r), float(a), seed)
            for e in epsilons for u in units for s in shops for r in rounds for a in alphas for seed in range(seeds)]


# ----------------------------------------------------------------------------- one point


def point_row(point: Point, report: dict, seconds: float) -> dict:
    """A flat row: the point, every metric of the federated model, the best baseline's, ε spent per
    shop, bytes and time."""
    table = report["table"]
    federated = next(v for k, v in table.items() if k.startswith("federated"))
    baselines = {k: v for k, v in table.items() if not k.startswith(("federated", "centralized"))}
    best = max(baselines, key=lambda k: baselines[k].get("mig_hr@5", -1.0))
    spent = {shop: values[-1] for shop, values in report.get("epsilon_per_shop", {}).items() if values}
    row = {"key": point.key, **asdict(point), "epsilon": point.epsilon if point.private else "inf"}
    row.update(federated)
    row["best_baseline"] = best
    row.update({f"baseline_{m}": baselines[best].get(m) for m in METRICS})
    row.update({"epsilon_spent_max": max(spent.values()) if spent else None,
                "epsilon_spent_per_shop": ";".join(f"{shop}={eps:.4f}" for shop, eps in sorted(spent.items())),
                "bytes": report.get("bytes_on_the_wire"), "seconds": seconds})
    return row


def run_point(point: Point, simulate_args: list[str], out: str) -> dict:
    """Run one point in a child process (its own Flower simulation) and keep its row. A Ray task body."""
    directory = Path(out) / POINTS / point.key
    command = [sys.executable, "-m", "fedinterest", "simulate", "--out", str(directory), *point.arguments(),
               "--reference-rounds", "0", *simulate_args]
    # the child starts a Ray instance of its own for Flower's engine: with no RAY_ADDRESS and its own
    # temporary directory, it cannot find (and join) the cluster this task runs on
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_TMPDIR": ray_tmp}
    env.setdefault(CACHE_ENV, str(Path(out) / "cache"))  # frozen-prefix encodings, shared by every point
    started = time.perf_counter()
    log_path = point_log(Path(out), point)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sweep point {point.key} failed (exit {code}); its log ends:\n{tail}")
    report = json.loads((directory / "report.json").read_text())
    row = point_row(point, report, time.perf_counter() - started)
    atomic_write_json(Path(out) / POINTS / f"{point.key}.json", row)
    return row


def finished(out: Path, point: Point) -> dict | None:
    path = out / POINTS / f"{point.key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def point_log(out: Path, point: Point) -> Path:
    return out / POINTS / f"{point.key}.log"


def point_progress(out: Path, point: Point) -> int:
    """Rounds a running point has finished (from its log)."""
    log = point_log(out, point)
    return log.read_text(errors="replace").count("[round ") if log.is_file() else 0


# ----------------------------------------------------------------------------- the sweep


def check_settings(out: Path, settings: dict, fresh: bool) -> None:
    """Finished points are reused only by a sweep with the same settings (other than the grid)."""
    path = out / "sweep_settings.json"
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = sorted(k for k in {*saved, *settings} if saved.get(k) != settings.get(k))
            raise ConfigError(f"{out} holds a sweep with other settings ({', '.join(changed)}); "
                              "use another --out, or --fresh to discard its points")
    if fresh and (out / POINTS).is_dir():
        shutil.rmtree(out / POINTS)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def synthetic_shops(out: Path, shops: int) -> Path:
    """The default synthetic shops (the demo's data at 5 shops), written once for every point of that size."""
    from fedinterest.common.data.load import MANIFEST

    from .runner import synth_config_of
    from .synthetic import SynthConfig, write_synthetic

    source = out / f"data-shops{shops}"
    config = SynthConfig(shops=shops, seed=0)
    if not (source / MANIFEST).is_file() or synth_config_of(source) != config.__dict__:
        write_synthetic(source, config)
    return source


def run_sweep(points: list[Point], simulate_args: Callable[[Point], list[str]], out: Path, *,
              ray_address: str | None = None, cpus_per_point: float | None = None,
              progress: Callable[[str], None] = print) -> list[dict]:
    """Run every unfinished point as a Ray task (``simulate_args(point)``: its settings); all rows in grid order."""
    rows = {p.key: row for p in points if (row := finished(out, p)) is not None}
    pending = [p for p in points if p.key not in rows]
    if rows:
        progress(f"{len(rows)} of {len(points)} points already finished in {out / POINTS}")
    if pending:
        for key, row in _run_on_ray(pending, simulate_args, out, ray_address, cpus_per_point, progress).items():
            rows[key] = row
    return [rows[p.key] for p in points]


def _run_on_ray(points: list[Point], simulate_args: Callable[[Point], list[str]], out: Path, address: str | None,
                cpus_per_point: float | None, progress: Callable[[str], None]) -> dict[str, dict]:
    import ray
    from tqdm import tqdm

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU tip the user cannot act on
    cpus = os.cpu_count() or 2
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    per_point = float(cpus_per_point or cpus)
    progress(f"running {len(points)} points as Ray tasks ({per_point:g} CPUs each; "
             f"{'cluster ' + address if address else 'local Ray'})")
    task = ray.remote(num_cpus=per_point, max_retries=0)(run_point)
    (out / POINTS).mkdir(parents=True, exist_ok=True)
    waiting = {task.remote(p, simulate_args(p), str(out)): p for p in points}
    rows, failures = {}, []
    sweep_bar = tqdm(total=len(points), desc="sweep", unit="point", position=0)
    point_bars: dict[str, tqdm] = {}  # one bar per running point: its rounds
    try:
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=5.0)
            for ref in done:
                point = waiting.pop(ref)
                try:
                    rows[point.key] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - one failed point does not lose the others
                    failures.append(f"{point.key}: {getattr(exc, 'cause', None) or exc}")  # Ray wraps it
                if point.key in point_bars:
                    point_bars.pop(point.key).close()
                sweep_bar.update(1)
            for point in waiting.values():
                rounds = point_progress(out, point)
                if rounds and point.key not in point_bars:
                    point_bars[point.key] = tqdm(total=point.rounds, desc=point.key, unit="round", leave=False,
                                                 position=1 + len(point_bars))
                if point.key in point_bars:
                    point_bars[point.key].n = min(rounds, point.rounds)
                    point_bars[point.key].refresh()
    finally:
        for bar in point_bars.values():
            bar.close()
        sweep_bar.close()
        ray.shutdown()
    if failures:
        raise SweepFailed(f"{len(failures)} sweep point(s) failed (the finished ones are kept; run the same "
                          "command again to retry the rest):\n" + "\n".join(failures))
    return rows


# ----------------------------------------------------------------------------- summary


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _beats(row_pairs: list[tuple[dict, dict]], metric: str) -> bool:
    """Whether the federated model beats the best baseline on ``metric`` with 95% confidence.

    With several seeds: a one-sided paired t-test over seeds. With one: a z-test on the test set,
    the two rates treated as independent binomials.
    """
    from scipy import stats

    diffs = [r[metric] - r[f"baseline_{metric}"] for r, _ in row_pairs]
    if len(diffs) >= 2:
        mean, se = _mean_se(diffs)
        return se > 0 and mean / se > stats.t.ppf(0.95, len(diffs) - 1) or (se == 0 and mean > 0)
    row = row_pairs[0][0]
    n = row["n_migrating"] if metric.startswith("mig_") else row["n"]
    p, q = row[metric], row[f"baseline_{metric}"]
    se = math.sqrt(max(p * (1 - p) + q * (1 - q), 1e-12) / max(n, 1))
    return (p - q) / se > stats.norm.ppf(0.95)


def summarise(rows: list[dict], tolerance: float = 0.01, metric: str = "mig_hr@5") -> dict:
    """Mean ± SE per ε for each (shops, unit, rounds, α), and the recommendation for each."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["shops"], row["unit"], row["rounds"], row["alpha"]), []).append(row)
    out = []
    for (shops, unit, rounds, alpha), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        by_eps: dict[str, list[dict]] = {}
        for row in members:
            by_eps.setdefault(str(row["epsilon"]), []).append(row)
        curve = []
        for eps, rs in sorted(by_eps.items(), key=lambda kv: float(kv[0])):
            entry = {"epsilon": float(eps), "seeds": len(rs)}
            for m in METRICS:
                entry[m], entry[f"{m}_se"] = _mean_se([r[m] for r in rs])
                entry[f"baseline_{m}"], _ = _mean_se([r[f"baseline_{m}"] for r in rs])
            entry["beats_baseline"] = _beats([(r, r) for r in rs], metric)
            curve.append(entry)
        private = [c for c in curve if math.isfinite(c["epsilon"])]
        plain = next((c for c in curve if not math.isfinite(c["epsilon"])), None)
        within = next((c["epsilon"] for c in private if plain and c[metric] >= plain[metric] - tolerance), None)
        beats = next((c["epsilon"] for c in private if c["beats_baseline"]), None)
        out.append({"shops": shops, "unit": unit, "rounds": rounds, "alpha": alpha, "curve": curve,
                    "non_private": plain[metric] if plain else None,
                    "best_baseline": members[0]["best_baseline"],
                    "baseline": sum(r[f"baseline_{metric}"] for r in members) / len(members),
                    "smallest_epsilon_within_tolerance": within, "smallest_epsilon_beating_baseline": beats})
    return {"metric": metric, "tolerance": tolerance, "groups": out}


def recommendation_text(summary: dict) -> str:
    metric, tolerance = summary["metric"], summary["tolerance"]
    lines = []
    for g in summary["groups"]:
        head = f"{g['shops']} shops, ε per {g['unit']}, {g['rounds']} rounds, α={g['alpha']:g}"
        within = g["smallest_epsilon_within_tolerance"]
        beats = g["smallest_epsilon_beating_baseline"]
        lines.append(f"{head}:")
        lines.append(f"  smallest ε within {tolerance:g} of non-private {metric}: "
                     + (f"{within:g}" if within is not None else "none of the ε tried"))
        lines.append(f"  smallest ε beating the best baseline ({g['best_baseline']}) with 95% confidence: "
                     + (f"{beats:g}" if beats is not None else "none of the ε tried"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- outputs


def write_outputs(rows: list[dict], summary: dict, out: Path) -> list[Path]:
    """sweep.csv, sweep.json, recommendation.txt and privacy_utility.png (atomically)."""
    import csv
    import io

    columns = list(rows[0]) if rows else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    atomic_write_json(out / "sweep.json", {"rows": rows, "summary": summary})
    atomic_write_text(out / "recommendation.txt", recommendation_text(summary) + "\n")
    return [out / "sweep.csv", out / "sweep.json", out / "recommendation.txt", plot(summary, out)]


def plot(summary: dict, out: Path) -> Path:
    """Utility against ε (log axis), mean ± SE over seeds, one curve per group; the non-private
    federation and the best baseline as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [summary["metric"], "hr@5"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2))
    for ax, metric in zip(axes, metrics):
        for i, g in enumerate(summary["groups"]):
            color = f"C{i}"
            label = f"{g['shops']} shops, per {g['unit']}"
            private = [c for c in g["curve"] if math.isfinite(c["epsilon"])]
            if private:
                ax.errorbar([c["epsilon"] for c in private], [c[metric] for c in private],
                            yerr=[0 if math.isnan(c[f"{metric}_se"]) else c[f"{metric}_se"] for c in private],
                            marker="o", capsize=3, color=color, label=f"DP federated ({label})")
            plain = [c for c in g["curve"] if not math.isfinite(c["epsilon"])]
            if plain:
                ax.axhline(plain[0][metric], color=color, linestyle="--", label=f"non-private federated ({label})")
            base = sum(c[f"baseline_{metric}"] for c in g["curve"]) / len(g["curve"])  # the test sets' mean
            ax.axhline(base, color=color, linestyle=":", label=f"best baseline: {g['best_baseline']} ({label})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε per privacy unit (log scale)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("privacy-utility trade-off (mean ± SE over seeds)")
    fig.tight_layout()
    path = out / "privacy_utility.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
