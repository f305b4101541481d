"""Shared test set-up: Flower and Hugging Face stay offline and quiet; shared synthetic data."""

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """The default synthetic shops (what `make demo` uses), generated once per session."""
    from simulations.synthetic import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, SynthConfig())
    return out


@pytest.fixture(scope="session")
def synthetic_task(synthetic_dir):
    from common.config import TaskConfig
    from common.data import load_events
    from common.task import prepare_task

    return prepare_task(load_events(synthetic_dir), TaskConfig())
