"""Central views that only a simulation can afford: the pooled test set and a pooled reference.

The federated model, the baselines and a centralized non-private reference (the same model
trained on all shops' data pooled, as if privacy did not matter) are scored on the same pooled
test examples, so the table compares like with like.
"""

from __future__ import annotations

import numpy as np

from client.privacy import PrivacyConfig
from client.shop import LocalShop, ModelConfig, SharedModel
from client.training import TrainConfig, predict_proba
from common.baselines import run_baselines
from common.data import EventTable
from common.metrics import evaluate
from common.model import get_adapter_state, set_adapter_state, unflatten
from common.settings import TaskSpec
from common.task import ExampleSet, prepare_task


def even_subset(examples: ExampleSet, limit: int | None) -> ExampleSet:
    if not limit or len(examples) <= limit:
        return examples
    return examples.subset(np.linspace(0, len(examples) - 1, limit).astype(np.int64))


def central_table(
    table: EventTable,
    spec: TaskSpec,
    model_config: ModelConfig,
    train_config: TrainConfig,
    weights: np.ndarray,
    label: str,
    *,
    max_test: int | None = 2000,
    reference_rounds: int = 0,
    reference_examples: int | None = None,
    state_dir=None,
    progress=print,
) -> dict[str, dict[str, float]]:
    """Rows: the federated model (``label``), the baselines, optionally the pooled reference."""
    task = prepare_task(table, spec.config, taxonomy=spec.taxonomy, split=spec.split)
    test = even_subset(task.test, max_test)
    shared = SharedModel.get(model_config, spec.taxonomy.class_names, train_config.device)
    template = get_adapter_state(shared.model)
    set_adapter_state(shared.model, unflatten(weights, template))
    data = shared.dataset(test, table.category_names, train_config.max_length)
    rows = {label: evaluate(predict_proba(shared.model, data), test.label, test.current)}
    rows.update(run_baselines(task.train, test))
    if reference_rounds > 0:
        progress(f"training the centralized non-private reference on pooled data ({reference_rounds} rounds)")
        reference = LocalShop(
            table, state_dir=state_dir or "/nonexistent", privacy=PrivacyConfig(epsilon=None),
            train=train_config, model=model_config, task=spec.config, taxonomy=spec.taxonomy,
            split=spec.split, max_train_examples=reference_examples, max_test_examples=None,
            shared=SharedModel(model_config, spec.taxonomy.class_names, train_config.device),
        )
        for r in range(reference_rounds):
            reference.train_round(total_rounds=reference_rounds, seed=r)
        # the frozen prefix is the same backbone's, so the encoded test set serves both models
        probs = predict_proba(reference.model, data)
        rows["centralized reference [NON-PRIVATE]"] = evaluate(probs, test.label, test.current)
    return rows
