"""Shared test set-up: Flower and Hugging Face stay offline and quiet; shared synthetic data."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# built artefacts (the tiny backbone) go to a fresh cache, shared with subprocesses, removed at exit
if "FEDINTEREST_CACHE" not in os.environ:
    os.environ["FEDINTEREST_CACHE"] = tempfile.mkdtemp(prefix="fedinterest-cache-")
    atexit.register(shutil.rmtree, os.environ["FEDINTEREST_CACHE"], True)
# privacy ledgers never go to ~/.fedinterest (nor to a home the caller set): a session home, and a fresh one
# per test (below), so shops of the same data in different tests keep separate budgets
os.environ["FEDINTEREST_HOME"] = tempfile.mkdtemp(prefix="fedinterest-home-")
atexit.register(shutil.rmtree, os.environ["FEDINTEREST_HOME"], True)


def pytest_collection_modifyitems(config, items):
    """The files marked ``long(minutes=M)`` first, so that under ``pytest -n N --dist loadfile
    --no-loadscope-reorder`` the workers start on them and finish together.

    xdist hands each worker one file, then a second one, then the rest as they free up: the long
    files go in rounds of N, longest first, every other round reversed (worker 1 gets the longest
    and the shortest of the next round), the other files after them in their own order.
    """
    workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    workers = workers if isinstance(workers, int) and workers > 0 else 1

    def minutes(item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.kwargs.get("minutes", 1)) if mark else 0.0

    files: dict[str, float] = {}
    for item in items:
        files.setdefault(str(item.path), minutes(item))
    long = sorted((f for f, m in files.items() if m > 0), key=lambda f: -files[f])
    rounds = [long[k:k + workers] for k in range(0, len(long), workers)]
    order = [f for r, chunk in enumerate(rounds) for f in (chunk if r % 2 == 0 else chunk[::-1])]
    rank = {f: k for k, f in enumerate(order)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def ledger_home(tmp_path_factory, monkeypatch):
    """This test's own ledger home (``FEDINTEREST_HOME``), shared with the subprocesses it starts."""
    home = tmp_path_factory.mktemp("ledger-home")
    monkeypatch.setenv("FEDINTEREST_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """The default synthetic shops (what `make demo` uses), generated once per session."""
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, SynthConfig())
    return out


@pytest.fixture(scope="session")
def synthetic_task(synthetic_dir):
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.task import prepare_task

    return prepare_task(load_events(synthetic_dir), TaskConfig())


@pytest.fixture(scope="session")
def tiny_shop_table(synthetic_dir):
    """One synthetic shop's events (the smallest shop keeps tests quick)."""
    from fedinterest.common.data import load_events
    from fedinterest.simulations.partition import partition_events

    shops = partition_events(load_events(synthetic_dir))
    return min(shops.values(), key=len)
