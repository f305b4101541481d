"""What a simulation shows the data scientist: the final table, ε per shop, bytes, plots.

All of it is computed on the simulation's side (the pooled data exists only because this is a
simulation); the federation itself only ever produced aggregates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedinterest.common.atomic import atomic_write_json


def shop_epsilons(node_configs: dict[int, dict], shops: list[str]) -> dict[str, list[float]]:
    """ε after each release (the statistics round, then every training round), per shop, from its ledger."""
    return {name: values["epsilon"] for name, values in shop_privacy(node_configs, shops).items()}


def shop_privacy(node_configs: dict[int, dict], shops: list[str]) -> dict[str, dict]:
    """Each shop's ledger in brief: ε after each release, the unit, δ and accountant behind it, and its home
    (a simulated shop's is fresh, in the run folder: ``simulations.runner.SIMULATED_LEDGER_HOME``)."""
    from fedinterest.client.ledger import BINDING_FILE, LEDGER_FILE, PrivacyLedger

    out = {}
    for pid, name in enumerate(shops):
        state = Path(node_configs[pid]["state-dir"])
        entry: dict = {"epsilon": [], "releases": [], "ledger_home": node_configs[pid].get("ledger-home"),
                       "ledger": "a fresh simulated ledger (simulated shops are new shops)"}
        if (state / BINDING_FILE).is_file() or (state / LEDGER_FILE).is_file():
            ledger = PrivacyLedger.open(state).read()
            entry["epsilon"] = [r.epsilon for r in ledger.releases]
            entry["releases"] = [r.kind for r in ledger.releases]
            if ledger.terms is not None:
                entry.update(unit=ledger.terms.unit, delta=ledger.terms.delta, accountant=ledger.terms.accountant)
        out[name] = entry
    return out


def plot_rounds(history: list[dict], epsilons: dict[str, list[float]], out: Path) -> list[Path]:
    """metrics_per_round.png and epsilon_per_round.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rounds = [h["round"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("acc@1", "acc@1"), ("hr@5", "HR@5"), ("mig_hr@5", "migrating HR@5")):
        axes[0].plot(rounds, [h["eval"].get(key, np.nan) for h in history], marker="o", label=label)
    axes[0].set_xlabel("round")
    axes[0].set_title("federated evaluation")
    axes[0].legend()
    axes[1].plot(rounds, [h["eval"].get("loss", np.nan) for h in history], marker="o", label="eval loss")
    axes[1].set_xlabel("round")
    axes[1].set_title("loss (each shop's training loss stays on the shop)")
    axes[1].legend()
    fig.tight_layout()
    paths.append(out / "metrics_per_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, values in epsilons.items():
        if values:
            ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("release (statistics, then training rounds)")
    ax.set_ylabel("ε spent")
    ax.set_title("privacy spent per shop")
    if any(epsilons.values()):
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "epsilon_per_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(out: Path, report: dict) -> Path:
    path = out / "report.json"
    atomic_write_json(path, report)
    return path
