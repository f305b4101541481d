"""The generator: determinism, and learnable migration structure on the default shops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedinterest.common.baselines import run_baselines
from fedinterest.common.config import TaskConfig
from fedinterest.simulations.synthetic import ORACLE_TASK, SynthConfig, bayes_accuracy_since, write_synthetic

SMALL = SynthConfig(shops=3, users=60, days=10, seed=11)


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SMALL)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_other_seed_other_data(tmp_path):
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SynthConfig(**{**SMALL.__dict__, "seed": 12}))
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a["shop_00.csv"] != b["shop_00.csv"]
    assert a["categories.csv"] == b["categories.csv"]  # the catalogue is fixed


def test_layout_is_taobao_and_manifest_complete(tmp_path):
    write_synthetic(tmp_path, SMALL)
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["format"] == "taobao" and len(manifest["shops"]) == 3
    first = (tmp_path / "shop_00.csv").read_text().splitlines()[0].split(",")
    assert len(first) == 5 and first[3] in {"pv", "fav", "cart", "buy"} and first[4].isdigit()


def test_shops_are_non_iid(synthetic_dir):
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    weights = np.array([list(s["chain_weights"].values()) for s in truth["shops"].values()])
    # each shop puts most of its weight on three of the ten chains, and shops differ
    top3 = np.sort(weights, axis=1)[:, -3:].sum(axis=1)
    assert (top3 > 0.5).all()
    assert np.abs(weights[0] - weights[1]).sum() > 0.3


def test_oracle_assumes_the_default_task():
    d = TaskConfig()
    assert ORACLE_TASK == {k: getattr(d, k) for k in ORACLE_TASK}


def test_oracle_counts_the_same_points_as_the_task(synthetic_dir, synthetic_task):
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    split, window = synthetic_task.split, synthetic_task.config.window_seconds
    test_days = [d for d in truth["bayes_optimal"]["by_day"]
                 if d["t"] >= split.test_start and d["t"] + window <= split.end]
    assert sum(d["points"] for d in test_days) == len(synthetic_task.test)


def test_default_data_has_learnable_migration_structure(synthetic_dir, synthetic_task):
    task = synthetic_task
    results = run_baselines(task.train, task.test)
    # Markov knows where interests go next: it beats persistence on migrating users
    assert results["markov"]["mig_hr@5"] > results["persistence"]["mig_hr@5"] + 0.1
    # ... and the process is more predictable than any baseline can see
    truth = json.loads((synthetic_dir / "ground_truth.json").read_text())
    bayes = bayes_accuracy_since(truth, task.split.test_start, task.split.end - task.config.window_seconds)
    for name, metrics in results.items():
        assert bayes > metrics["acc@1"] + 0.05, name
    assert 0.2 < task.test.migrating.mean() < 0.8


def test_bad_config_is_refused():
    from fedinterest.common.config import ConfigError

    with pytest.raises(ConfigError, match="users must be at least 2 per shop"):
        SynthConfig(shops=10, users=5)


@pytest.fixture(scope="module")
def realistic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    write_synthetic(out, SynthConfig.realistic(users=500, days=14, seed=3))
    return out


def test_realistic_shops_are_as_hard_as_the_real_sample(realistic_dir):
    """Anonymous numeric categories, a long tail, mostly migrating labels, out-of-window rows that
    the loader drops and reports; and the model still starts exactly at counting there."""
    from fedinterest.common.data import load_events
    from fedinterest.common.data.schema import ACTION_WEIGHTS
    from fedinterest.common.task import prepare_task

    manifest = json.loads((realistic_dir / "dataset.json").read_text())
    assert "category_names" not in manifest and not (realistic_dir / "categories.csv").exists()
    table = load_events(realistic_dir)
    assert table.category_names == {}
    assert table.report.rows_skipped == SynthConfig.realistic().outliers
    assert "outside the time window" in table.report.summary()
    frame = table.frame
    engagement = np.bincount(frame["category"].cat.codes.to_numpy(), weights=ACTION_WEIGHTS[frame["action"].to_numpy()])
    top50 = np.sort(engagement)[::-1][:50].sum() / engagement.sum()
    assert len(engagement) > 500 and 0.35 < top50 < 0.7  # the Taobao sample: 0.50 of 2,910 categories
    task = prepare_task(table, TaskConfig(top_k=len(engagement)))
    assert task.test.migrating.mean() > 0.75  # the Taobao sample: 0.85
    # the default shops stay as they were: no tail, names on
    assert SynthConfig().tail_categories == 0 and not SynthConfig().anonymous
