"""`fedinterest serve` as a real process over real HTTP: `predict`'s numbers, 4xx for bad input, /metrics.

One tiny export (random adapter on the tiny backbone, built offline) and one server serve the
module; `fedinterest predict` runs on the same data beside it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

START_TIMEOUT = 120.0
MAX_EVENTS = 500


def build_tiny_export(out: Path) -> tuple[Path, Path]:
    """A synthetic shop and an export of a random (non-zero) adapter for it: (data dir, export dir)."""
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.model import get_adapter_state
    from fedinterest.common.task import prepare_task
    from fedinterest.common.task.priors import Priors
    from fedinterest.server.export import export_model
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    data = out / "data"
    write_synthetic(data, SynthConfig(shops=1, users=40, days=10, seed=3))
    task = prepare_task(load_events(data), TaskConfig())
    taxonomy, n = task.taxonomy, task.taxonomy.n_classes
    shared = SharedModel(ModelConfig(backbone="tiny"), taxonomy.class_names, "cpu")
    rng = np.random.default_rng(0)
    state = {k: (v + rng.normal(0, 0.2, v.shape)).astype(v.dtype) for k, v in get_adapter_state(shared.model).items()}
    priors = Priors.from_counts(rng.integers(1, 50, n), rng.integers(0, 20, (min(n, 5), n)))
    card = {"format": "fedinterest-model-card", "backbone": "tiny", "num_labels": n,
            "task": task.config.to_dict(), "settings": {"max-length": 48}}
    return data, export_model(shared.model, state, taxonomy, card, out / "export", priors)


def fedinterest_command() -> list[str]:
    script = Path(sys.executable).with_name("fedinterest")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fedinterest"]


def environment() -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | dict | None = None, timeout: float = 60.0) -> tuple[int, object]:
    """(status, parsed JSON or text) of a GET (no body) or POST."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """url, events (user -> events as the data holds them), expected (predict's CSV) and taxonomy ids."""
    from fedinterest.common.data import load_events
    from fedinterest.common.data.schema import ACTION_WORDS

    out = tmp_path_factory.mktemp("serve")
    data, export = build_tiny_export(out)
    port = free_port()
    log = open(out / "server.log", "wb")
    server = subprocess.Popen(
        [*fedinterest_command(), "serve", "--adapter", str(export), "--port", str(port), "--device", "cpu",
         "--category-names", str(data / "categories.csv"), "--max-events", str(MAX_EVENTS),
         "--max-users", "16", "--max-body-mb", "0.25", "--max-wait-ms", "20", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=environment())
    try:
        predict = subprocess.run([*fedinterest_command(), "predict", "--adapter", str(export), "--data", str(data),
                                  "--out", str(out / "predictions.csv"), "--device", "cpu"],
                                 capture_output=True, text=True, env=environment(), timeout=300)
        assert predict.returncode == 0, predict.stderr[-2000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + START_TIMEOUT
        while True:
            assert server.poll() is None, f"the server exited:\n{tail(out / 'server.log')}"
            try:
                if call(f"{url}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, f"no /health after {START_TIMEOUT:.0f} s:\n{tail(out / 'server.log')}"
            time.sleep(0.3)
        frame = load_events(data).frame
        events: dict[str, list[dict]] = {}
        for row in frame.itertuples(index=False):  # in file order, as predict reads them
            events.setdefault(str(row.user_id), []).append({
                "timestamp": int(row.timestamp), "category": str(row.category),
                "action": ACTION_WORDS[int(row.action)], "item_id": str(row.item_id)})
        taxonomy = json.loads((export / "taxonomy.json").read_text())["categories"]
        yield {"url": url, "events": events, "expected": pd.read_csv(out / "predictions.csv", dtype={"user_id": str}),
               "taxonomy": taxonomy}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def assert_same_as_predict(result: dict, row: pd.Series) -> None:
    assert result["reason"] is None, result
    assert result["current_interest"] == row["current_interest"]
    assert [t["category"] for t in result["top5"]] == [row[f"top{k}"] for k in range(1, 6)]
    assert np.allclose([t["p"] for t in result["top5"]], [row[f"top{k}_p"] for k in range(1, 6)], atol=1e-5)
    assert result["p_migrate"] == pytest.approx(row["p_migrate"], abs=1e-5)


def test_concurrent_requests_give_predicts_numbers(served):
    url, events, expected = served["url"], served["events"], served["expected"].set_index("user_id")
    at = int(pd.Timestamp(expected["prediction_time"].iloc[0]).timestamp())
    users = list(expected.index[:12])
    outside = {e["category"] for u in users for e in events[u]} - set(served["taxonomy"])
    assert outside, "the compared users should hold categories outside the taxonomy (rendered from the names file)"
    requests = [{"users": [{"user_id": u, "events": events[u]} for u in users[i:i + 3]], "at": at}
                for i in range(0, len(users), 3)]
    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(lambda body: call(f"{url}/predict", body), requests))
    for body, (status, reply) in zip(requests, replies):
        assert status == 200, reply
        assert [p["user_id"] for p in reply["predictions"]] == [u["user_id"] for u in body["users"]]
        for result in reply["predictions"]:
            assert result["prediction_time"] == at
            assert_same_as_predict(result, expected.loc[result["user_id"]])

    # without "at": the end of the day of the request's last event, as predict picks for a file of them
    last_day = [u for u in expected.index if max(e["timestamp"] for e in events[u]) // 86400 == at // 86400 - 1]
    status, reply = call(f"{url}/predict", {"users": [{"user_id": u, "events": events[u]} for u in last_day[:4]]})
    assert status == 200 and len(reply["predictions"]) == min(4, len(last_day)), reply
    for result in reply["predictions"]:
        assert result["prediction_time"] == at
        assert_same_as_predict(result, expected.loc[result["user_id"]])


def test_short_histories_and_unknown_categories(served):
    url, events = served["url"], served["events"]
    some = next(iter(events.values()))
    unknown = [{**e, "category": "no-such-category"} for e in some]
    status, reply = call(f"{url}/predict", {"users": [
        {"user_id": "short", "events": some[:2]},
        {"user_id": 7, "events": unknown},
    ]})
    assert status == 200, reply
    short, mapped = reply["predictions"]
    assert short["top5"] is None and short["p_migrate"] is None and "at least 3" in short["reason"]
    assert mapped["user_id"] == "7" and mapped["current_interest"] == "other"  # outside the taxonomy: other
    assert len(mapped["top5"]) == 5 and "other" not in {t["category"] for t in mapped["top5"]}


def event(**overrides) -> dict:
    return {"timestamp": 1757000000, "category": "1063", "action": "view", **overrides}


BAD = [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b"[1, 2]", 422, "body"),
    ({"users": "u1"}, 422, "users"),
    ({"users": []}, 422, "users"),
    ({"users": [{"user_id": "a"}]}, 422, "users[0].events"),
    ({"users": [{"user_id": "a", "events": []}]}, 422, "users[0].events"),
    ({"users": [{"user_id": ["a"], "events": [event()]}]}, 422, "users[0].user_id"),
    ({"users": [{"user_id": "a", "events": [event(timestamp="noon")]}]}, 422, "users[0].events[0].timestamp"),
    ({"users": [{"user_id": "a", "events": [event(timestamp=1.7e9)]}]}, 422, "users[0].events[0].timestamp"),
    ({"users": [{"user_id": "a", "events": [event(timestamp=17)]}]}, 422, "users[0].events[0].timestamp"),
    ({"users": [{"user_id": "a", "events": [event(action="stare")]}]}, 422, "users[0].events[0].action"),
    ({"users": [{"user_id": "a", "events": [event(category=None)]}]}, 422, "users[0].events[0].category"),
    ({"users": [{"user_id": "a", "events": [event(behaviour="pv")]}]}, 422, "users[0].events[0].behaviour"),
    ({"users": [{"user_id": "a", "events": [event()]}], "at": "tomorrow"}, 422, "at"),
    ({"users": [{"user_id": u, "events": [event()]} for u in ("a", "b", "a")]}, 422, "users[2].user_id"),
    ({"users": [{"user_id": "a", "events": [event()] * (MAX_EVENTS + 1)}]}, 422, "users[0].events"),
    ({"users": [{"user_id": str(i), "events": [event()]} for i in range(17)]}, 422, "users"),
    (b'{"users": "' + b"x" * 300_000 + b'"}', 413, "body"),
    (b'{"users": [{"user_id": ' + b"9" * 5000 + b', "events": []}]}', 422, "body"),  # beyond int parsing
    (b'{"users": [{"user_id": "a", "events": [{"timestamp": ' + b"1" * 5000 + b'}]}]}', 422, "body"),
]


@pytest.mark.parametrize("body,status,where", BAD, ids=[f"{i}-{s}-{w}" for i, (_, s, w) in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(served, body, status, where):
    got, reply = call(f"{served['url']}/predict", body)
    assert got == status, reply
    assert isinstance(reply, dict) and reply["error"].startswith(f"{where}:"), reply
    assert "Traceback" not in json.dumps(reply)


def test_health_and_metrics_name_no_path_on_the_server(served):
    status, health = call(f"{served['url']}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["adapter"].startswith("sha256:") and "/" not in json.dumps(health)
    status, text = call(f"{served['url']}/metrics")
    assert status == 200 and "/tmp" not in text and "/work" not in text


def counters(url: str) -> dict[str, float]:
    status, text = call(f"{url}/metrics")
    assert status == 200 and isinstance(text, str)
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)}


def test_metrics_count_requests_errors_and_batches(served):
    url, events = served["url"], served["events"]
    before = counters(url)
    user = next(iter(events))
    assert call(f"{url}/predict", {"users": [{"user_id": user, "events": events[user]}]})[0] == 200
    assert call(f"{url}/predict", b"{")[0] == 400
    assert call(f"{url}/predict", {"users": []})[0] == 422
    after = counters(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('fedinterest_http_requests_total{path="/predict",status="200"}') == 1
    assert delta('fedinterest_http_requests_total{path="/predict",status="400"}') == 1
    assert delta('fedinterest_http_errors_total{status="422"}') == 1
    assert delta("fedinterest_batches_total") == 1 and delta("fedinterest_batch_size_sum") == 1
    assert delta("fedinterest_predict_latency_seconds_count") == 1
    assert after['fedinterest_predict_users_total{outcome="scored"}'] >= 1
    assert 0 < after['fedinterest_predict_latency_seconds{quantile="0.5"}'] < 60
