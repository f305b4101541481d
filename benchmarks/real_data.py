"""The model against counting on a real public log: baselines, centralized and federated, in one table.

Partitions the log's users into N shops (Dirichlet by default) and runs, on one label space and
one split (the DP federation's: chosen privately, then published to the other runs):

- the baselines (persistence, popularity, Markov, recency-weighted frequency) on the pooled data;
- a centralized non-private model (the same scorer, trained on the pooled training examples);
- the federation without DP, and the federation with DP (ε per customer in every shop, PRV,
  SecAgg+), both run with ``flwr run`` on a local simulation SuperLink.

Every row is scored on the same pooled test examples with a named label; standard errors are
binomial (sqrt(p(1-p)/n)). Usage:

    python benchmarks/real_data.py data/real/taobao_head/UserBehavior.csv --format taobao [--shops 5]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ZONES = {"taobao": 8 * 3600, "tmall": 0}
COLUMNS = ("hr@5", "mig_hr@5", "acc@1", "ndcg@5", "mig_ndcg@5", "mig_auroc", "other_share")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="events file or dataset directory")
    parser.add_argument("--format", default=None, help="taobao, tmall, rees46, retailrocket, generic (default: detect)")
    parser.add_argument("--shops", type=int, default=5)
    parser.add_argument("--partition", default="dirichlet", choices=("dirichlet", "iid", "natural"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--unit", default="user", choices=("user", "example"))
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--lora-layers", default="top1")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--max-train-per-user", type=int, default=None,
                        help="training examples of each customer (a keyed per-customer choice; default all)")
    parser.add_argument("--central-test", type=int, default=None, help="pooled test examples (default: all)")
    parser.add_argument("--catalogue", metavar="FILE", default=None,
                        help="the platform's published categories (a category list: category_id[,category_name])")
    parser.add_argument("--catalogue-log", metavar="FILE", default=None,
                        help="a public log of other customers (no user in common with DATA) whose categories stand "
                             "for the platform's catalogue, e.g. data/real/taobao_tail/UserBehavior.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/real_data")
    args = parser.parse_args()

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    from fedinterest.client.shop import ModelConfig
    from fedinterest.client.training import TrainConfig
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.model import LoraSettings
    from fedinterest.common.model.lora import parse_layers
    from fedinterest.simulations.central import central_table, score_weights
    from fedinterest.simulations.flwr_run import run_federation_process
    from fedinterest.simulations.runner import prepare

    started = time.perf_counter()
    out = Path(args.out)
    task = TaskConfig(utc_offset=ZONES.get(args.format or "", 0))
    train = TrainConfig(batch_size=args.batch_size, physical_batch_size=max(args.batch_size, 128),
                        learning_rate=args.lr, epochs=args.epochs, max_grad_norm=args.clip,
                        max_length=args.max_length)
    model = ModelConfig(backbone=args.backbone, lora=LoraSettings(layers=parse_layers(args.lora_layers),
                                                                  seed=args.seed))
    run_config = {
        "num-server-rounds": args.rounds, "seed": args.seed, "backbone": args.backbone,
        "lora-layers": args.lora_layers, "batch-size": train.batch_size,
        "physical-batch-size": train.physical_batch_size, "lr": train.learning_rate, "local-epochs": train.epochs,
        "clip": train.max_grad_norm, "max-length": train.max_length, "eval-per-user": 1,
    }
    catalogue = published_catalogue(args)
    common = dict(data=args.data, data_format=args.format, shops=args.shops, partition=args.partition,
                  seed=args.seed, max_train_per_user=args.max_train_per_user, task_config=task)

    dp = prepare(out / "dp", epsilon=args.epsilon, privacy={"privacy-unit": args.unit}, catalogue=catalogue, **common)
    print(f"{len(dp.shops)} shops of {args.data}: {dp.table.report.summary()}")
    federated_dp = run_federation_process(dp, {**run_config, "out-dir": str(out / "dp" / "federation")},
                                          progress=_quiet).result
    spec = federated_dp.task  # the label space the DP federation chose privately, now public
    plain = prepare(out / "np", epsilon=None, taxonomy=spec.taxonomy, **common)
    federated = run_federation_process(plain, {**run_config, "out-dir": str(out / "np" / "federation")},
                                       progress=_quiet).result
    dp_label = f"federated [DP ε={args.epsilon:g}/{args.unit}, SecAgg+]"
    rows = central_table(dp.table, spec, model, train, federated_dp.weights, dp_label,
                         max_test=args.central_test, reference_rounds=args.rounds)
    rows["federated [NON-PRIVATE, SecAgg+]"] = score_weights(dp.table, federated.task, model, train,
                                                             federated.weights, max_test=args.central_test)
    print()
    print(table_with_errors(rows))
    print(f"\nlabel space: {spec.taxonomy.n_classes - 1} categories + other (chosen with DP); "
          f"{len(dp.shops)} shops, {args.rounds} rounds; total {time.perf_counter() - started:.0f} s")
    return 0


def published_catalogue(args):
    """The catalogue the platform publishes: a category list, the categories of a public log of *other*
    customers, or None (the DP federation then selects a domain from the shops' logs, charged)."""
    from fedinterest.common.data import LoadOptions, load_events
    from fedinterest.common.data.schema import DataError
    from fedinterest.common.task.catalogue import Catalogue

    if args.catalogue:
        return Catalogue.read(args.catalogue)
    if not args.catalogue_log:
        return None
    public = load_events(args.catalogue_log, LoadOptions(format=args.format))
    shops = load_events(args.data, LoadOptions(format=args.format))
    shared = set(public.frame["user_id"].astype(str)) & set(shops.frame["user_id"].astype(str))
    if shared:
        raise DataError(f"--catalogue-log {args.catalogue_log}: shares {len(shared)} customers with {args.data}; "
                        "a public catalogue must not come from the shops' own customers")
    catalogue = Catalogue.observed(public)
    print(f"catalogue: {len(catalogue.categories)} categories of {args.catalogue_log} "
          f"({public.frame['user_id'].nunique()} other customers, none of the shops')")
    return catalogue


def _quiet(line: str) -> None:
    if line.startswith("[round") or "label space" in line or "priors" in line:
        print(line, flush=True)


def standard_error(p: float, n: float) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def table_with_errors(rows: dict[str, dict[str, float]]) -> str:
    """Named-label HR@5 and migrating HR@5 with standard errors, then the other metrics."""
    width = max(len(n) for n in rows)
    head = (f"{'model':<{width}}  {'HR@5':>13}  {'mig HR@5':>13}  {'acc@1':>6}  {'NDCG@5':>6}  "
            f"{'mig NDCG@5':>10}  {'mig AUROC':>9}  {'other':>6}  {'n':>6}  {'n mig':>6}")
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        hr, mig = m["hr@5"], m["mig_hr@5"]
        lines.append(
            f"{name:<{width}}  {hr:.3f} ± {standard_error(hr, m['n']):.3f}  "
            f"{mig:.3f} ± {standard_error(mig, m['n_migrating']):.3f}  {m['acc@1']:>6.3f}  {m['ndcg@5']:>6.3f}  "
            f"{m['mig_ndcg@5']:>10.3f}  {m['mig_auroc']:>9.3f}  {m['other_share']:>6.3f}  {m['n']:>6.0f}  "
            f"{m['n_migrating']:>6.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from fedinterest.common.config import ConfigError
    from fedinterest.common.data.schema import DataError

    try:
        raise SystemExit(main())
    except (ConfigError, DataError) as exc:  # bad input: one line saying what to do, no traceback
        print(f"real_data.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
