"""Central views that only a simulation can afford: the pooled test set and a pooled reference.

The federated model, the baselines and a centralized non-private reference (the same model
trained on all shops' data pooled, as if privacy did not matter) are scored on the same pooled
test examples, so the table compares like with like.
"""

from __future__ import annotations

import numpy as np

from fedinterest.client.privacy import PrivacyConfig
from fedinterest.client.shop import LocalShop, ModelConfig, SharedModel
from fedinterest.client.training import TrainConfig, predict_proba
from fedinterest.common.baselines import run_baselines
from fedinterest.common.data import EventTable
from fedinterest.common.metrics import evaluate
from fedinterest.common.model import get_adapter_state, set_adapter_state, unflatten
from fedinterest.common.model.scorer import set_priors
from fedinterest.common.task.priors import Priors
from fedinterest.common.settings import TaskSpec
from fedinterest.common.task import ExampleSet, prepare_task


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
    """Rows: the federated model (``label``), the baselines, optionally the pooled reference.

    The reference is the same model trained on all shops' training examples pooled, without DP,
    with priors counted exactly from them, kept at its best round on the pooled validation days.
    """
    task = prepare_task(table, spec.config, taxonomy=spec.taxonomy, split=spec.split)
    test = even_subset(task.test, max_test)
    other = spec.taxonomy.other
    shared, data = _scoring_model(table, spec, model_config, train_config, test)
    rows = {label: _score(shared, weights, data, test, other)}
    rows.update(run_baselines(task.train, test))
    if reference_rounds > 0:
        progress(f"training the centralized non-private reference on pooled data ({reference_rounds} rounds)")
        reference = LocalShop(
            table, state_dir=state_dir or "/nonexistent", privacy=PrivacyConfig(epsilon=None),
            train=train_config, model=model_config, task=spec.config, taxonomy=spec.taxonomy,
            split=spec.split, max_train_examples=reference_examples, max_test_examples=None,
            shared=SharedModel(model_config, spec.taxonomy.class_names, train_config.device), seed=0,
        )
        val = even_subset(task.val, max_test)
        val_data = reference.shared.dataset(val, table.category_names, train_config.max_length)
        best, best_state = -1.0, None
        for r in range(reference_rounds):
            reference.train_round(total_rounds=reference_rounds, seed=r)
            # early stopping on the pooled validation days: a reference may look at them, a shop's
            # federated model does not (it trains a fixed number of rounds)
            score = evaluate(predict_proba(reference.model, val_data), val.label, val.current, other)["hr@5"]
            if score > best:
                best, best_state = score, reference.adapter_state()
        if best_state is not None:
            reference.load_adapter(best_state)
        # the frozen prefix is the same backbone's, so the encoded test set serves both models
        probs = predict_proba(reference.model, data)
        rows["centralized reference [NON-PRIVATE]"] = evaluate(probs, test.label, test.current, other)
    return rows


def score_weights(table: EventTable, spec: TaskSpec, model_config: ModelConfig, train_config: TrainConfig,
                  weights: np.ndarray, max_test: int | None = 2000) -> dict[str, float]:
    """Metrics of a federated model (its flat adapter ``weights`` under ``spec``) on the pooled test set."""
    task = prepare_task(table, spec.config, taxonomy=spec.taxonomy, split=spec.split)
    test = even_subset(task.test, max_test)
    shared, data = _scoring_model(table, spec, model_config, train_config, test)
    return _score(shared, weights, data, test, spec.taxonomy.other)


def _scoring_model(table, spec: TaskSpec, model_config: ModelConfig, train_config: TrainConfig, test: ExampleSet):
    shared = SharedModel.get(model_config, spec.taxonomy.class_names, train_config.device)
    priors = spec.priors or Priors.uniform(spec.taxonomy.n_classes)
    set_priors(shared.model, priors)
    shared.priors = priors
    return shared, shared.dataset(test, table.category_names, train_config.max_length)


def _score(shared: SharedModel, weights: np.ndarray, data, test: ExampleSet, other: int) -> dict[str, float]:
    set_adapter_state(shared.model, unflatten(weights, get_adapter_state(shared.model)))
    return evaluate(predict_proba(shared.model, data), test.label, test.current, other)
