"""One simulated federation end to end, as ``fedinterest simulate`` runs it.

The shops are prepared (``runner.prepare``), the federation runs with ``flwr run`` on a local
simulation SuperLink (``flwr_run``), and the federated model is scored on the pooled test set beside
the baselines and a centralized non-private reference (``central``); ε per shop, bytes on the wire,
``report.json`` and plots go to the output folder.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: The non-private reference's pooled examples per shop, by default.
REFERENCE_PER_SHOP = 3000


@dataclass
class Experiment:
    """What ``simulate`` was asked for, validated: the shops, their privacy, the training, the report."""

    out: Path
    privacy: Any  # client.privacy.PrivacyConfig
    train: Any  # common.config.TrainConfig
    models: Any  # client.shop.ModelConfig
    task: Any  # common.config.TaskConfig
    run_config: dict  # the ServerApp's run config (out-dir, seed and the device settings are added here)
    data: str | None = None
    data_format: str | None = None
    shops: int = 5
    partition: str = "auto"
    alpha: float = 0.5
    seed: int = 0
    taxonomy: Any = None  # a published common.task.Taxonomy, else chosen privately
    max_train_per_user: int = 6
    resume: bool = False
    device: str = "auto"
    gpus_per_shop: float | None = None
    cpus_per_shop: float | None = None
    bf16: bool = False
    dp_engine: str = "opacus"
    central_test: int = 2000
    reference_rounds: int | None = None
    reference_examples: int | None = None


def shared_encodings(out: Path, gpus: int) -> dict[str, str]:
    """On GPUs many shop workers run at once and a shop's next round may land on another one: they
    share the shops' frozen-prefix encodings through a cache in ``out`` instead of each encoding
    them again. One CPU worker keeps them in memory."""
    from fedinterest.common.model.prefix import CACHE_ENV

    return {CACHE_ENV: str((out / "prefix-cache").resolve())} if gpus else {}


def simulate(experiment: Experiment) -> int:
    """Run ``experiment``, print its table and write its report; the exit status (1: the federation failed)."""
    import torch

    from fedinterest.common.report import format_table
    from fedinterest.simulations.central import central_table
    from fedinterest.simulations.flwr_run import FederationFailed, run_federation_process, simulation_devices
    from fedinterest.simulations.report import plot_rounds, shop_privacy, write_report
    from fedinterest.simulations.runner import LEDGERS_NOTE, prepare

    e = experiment
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    started = time.perf_counter()
    out = Path(e.out)
    privacy = e.privacy
    node_privacy = {"privacy-unit": privacy.unit, "accountant": privacy.accountant}
    if privacy.delta is not None:
        node_privacy["delta"] = privacy.delta
    device, gpus, gpus_per_shop = simulation_devices(e.device, e.gpus_per_shop, torch.cuda.device_count())
    train = replace(e.train, device=device)  # the reference and the final table run there too
    cpus = os.cpu_count() or 2
    cpus_per_shop = e.cpus_per_shop
    if cpus_per_shop is None:
        cpus_per_shop = 1.0 if gpus else float(min(cpus, max(2, cpus // 4)))
    node_settings = {"device": device, "bf16": bool(e.bf16), "dp-engine": e.dp_engine}
    prepared = prepare(out, data=e.data, data_format=e.data_format, shops=e.shops, partition=e.partition,
                       alpha=e.alpha, seed=e.seed, epsilon=privacy.epsilon, privacy=node_privacy,
                       node_settings=node_settings, taxonomy=e.taxonomy, max_train_per_user=e.max_train_per_user,
                       fresh=not e.resume, threads=max(1, int(cpus_per_shop)), task_config=e.task)
    print(f"{len(prepared.shops)} shops from {prepared.data}; {privacy.describe()}; secure aggregation on")
    print(LEDGERS_NOTE)
    if gpus:
        print(f"shops train on {gpus} GPU(s), {gpus_per_shop:g} of a GPU per shop worker "
              f"({'bf16' if e.bf16 else 'fp32'}, DP engine {e.dp_engine})")
    run_config = {**e.run_config, "seed": e.seed, "out-dir": str(out / "federation"), "resume": e.resume}
    try:
        result = run_federation_process(prepared, run_config, cpus=cpus, cpus_per_shop=cpus_per_shop,
                                        gpus=gpus, gpus_per_shop=gpus_per_shop,
                                        environment=shared_encodings(out, gpus)).result
    except FederationFailed as exc:
        print(f"fedinterest simulate: error: {exc}", file=sys.stderr)
        return 1
    label = f"federated [{privacy.label()}, SecAgg+]"
    reference_rounds = run_config["num-server-rounds"] if e.reference_rounds is None else e.reference_rounds
    pooled_examples = e.reference_examples or REFERENCE_PER_SHOP * len(prepared.shops)
    rows = central_table(prepared.table, result.task, e.models, train, result.weights, label,
                         max_test=e.central_test, reference_rounds=reference_rounds,
                         reference_examples=pooled_examples)
    shop_terms = shop_privacy(prepared.node_configs, prepared.shops)
    epsilons = {name: entry["epsilon"] for name, entry in shop_terms.items()}
    wire_bytes = sum(h["bytes_up"] + h["bytes_down"] for h in result.history)
    print()
    print(format_table(rows))
    print()
    for shop, entry in shop_terms.items():
        values = entry["epsilon"]
        if values:
            spent = (f"ε {values[-1]:.3f} per {entry['unit']} after {len(values)} releases "
                     f"({', '.join(entry['releases'])}), δ={entry['delta']:.1e}, {entry['accountant'].upper()}")
        else:
            spent = "no private release recorded"
        print(f"  {shop}: {spent}")
    print(f"label space: {result.task.label_space} ({result.task.taxonomy.n_classes - 1} categories + other)")
    flows = top_flows(result.task)
    if flows:
        print("top migration flows of all shops (noised, securely summed):")
        for flow in flows[:10]:
            print(f"  {flow['from']} -> {flow['to']}: {flow['share']:.1%} of moves from {flow['from']}")
    print(f"bytes on the wire: {wire_bytes / 1e6:.2f} MB over {len(result.history)} rounds "
          f"({wire_bytes / max(len(result.history), 1) / max(len(prepared.shops), 1) / 1e6:.2f} MB per shop per round)")
    plots = plot_rounds(result.history, epsilons, out)
    report = {
        "shops": prepared.shops, "rounds": len(result.history), "privacy": privacy.describe(),
        "privacy_unit": privacy.unit if privacy.private else None,
        "accountant": privacy.accountant if privacy.private else None,
        "privacy_per_shop": shop_terms, "label_space": result.task.label_space, "top_flows": flows,
        "table": rows, "epsilon_per_shop": epsilons, "history": result.history, "bytes_on_the_wire": wire_bytes,
        "export": result.export_dir, "seconds": time.perf_counter() - started, "settings": run_config,
    }
    path = write_report(out, report)
    print(f"report: {path}; plots: {', '.join(str(p) for p in plots)}; adapter: {result.export_dir}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0



def top_flows(task, limit: int = 20) -> list[dict]:
    """The largest (current interest -> next interest) moves in the platform's private label flows."""
    priors = task.priors
    if priors is None or priors.counts is None or len(priors.counts) < 2:
        return []
    moves = priors.counts[:-1].copy()
    rows = len(moves)
    moves[range(rows), range(rows)] = 0.0  # staying is not a migration
    moves[:, task.taxonomy.other] = 0.0
    totals = moves.sum(axis=1, keepdims=True)
    names = task.taxonomy.class_names
    order = sorted(((i, j) for i in range(rows) for j in range(moves.shape[1]) if moves[i, j] > 0),
                   key=lambda ij: -moves[ij])[:limit]
    return [{"from": names[i], "to": names[j], "mass": float(moves[i, j]), "share": float(moves[i, j] / totals[i, 0])}
            for i, j in order]
