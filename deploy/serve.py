"""HTTP predictions from an exported adapter: the FastAPI app behind ``fedinterest serve``.

``POST /predict`` takes users' recent events and returns, per user, the top-5 next categories
and the probability of migrating, computed exactly as ``fedinterest predict`` computes them
(the same functions: ``latest_examples``, ``shop_dataset``, ``predict_proba``). Request::

    {"users": [{"user_id": "u1",
                "events": [{"timestamp": 1756721696, "category": "1175", "action": "view",
                            "item_id": "100502"}, ...]}, ...],
     "at": 1757030400}

Fields follow the canonical event schema (``common.data.schema``):

* ``user_id``: string or integer, unique within a request;
* ``timestamp``: integer Unix seconds (UTC), 1990-01-01 .. 2100-01-01;
* ``category``: the category id as the data spells it (string or integer). Ids outside the
  taxonomy count as ``other``, as they do for ``predict`` and in training; their words in the
  rendered history come from ``--category-names`` if given, else ``cat<id>``;
* ``action``: ``view`` (``pv``, ``click``), ``fav``, ``cart``, ``buy`` (``purchase``, ...) or 0-3;
* ``item_id``: optional (the model does not read it);
* ``at``: optional prediction time (Unix seconds); default: the end of the UTC day (the task's
  stride) holding the request's last event, what ``predict`` picks for a file of the same events.

Events are taken in time order (ties keep their order in the request). Response::

    {"predictions": [{"user_id": "u1", "prediction_time": 1757030400, "current_interest": "wireless earbuds",
                      "top5": [{"category": "wireless earbuds", "category_id": "1175", "p": 0.776471}, ...],
                      "p_migrate": 0.223529, "reason": null}, ...]}

A user with fewer than ``min_history`` events before ``at`` is not an error: its entry has
``top5``, ``current_interest`` and ``p_migrate`` null and ``reason`` saying why. Probabilities
are rounded to 6 decimals, as in ``predict``'s CSV.

Errors are JSON ``{"error": "<field>: <reason>", "errors": [...]}``: 400 for a body that is not
JSON, 422 for invalid fields or limits (users per request, events per user), 413 for a body
over the size limit. ``GET /health`` answers once the model is loaded; ``GET /metrics`` is
Prometheus text.

Concurrent requests are batched: the batcher gathers requests for up to ``max_wait_ms`` or
``max_batch`` users and scores them in one forward pass on a worker thread, so the event loop
keeps accepting requests while the model runs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from starlette.exceptions import HTTPException

from fedinterest.deploy.predict import Predictor, prediction_time, rank, score_examples
from fedinterest.common.data.formats import GENERIC_ACTIONS
from fedinterest.common.data.schema import Action, EventTable
from fedinterest.common.data.timestamps import MAX_SECONDS, MIN_SECONDS
from fedinterest.common.task import EventArrays, ExampleSet, latest_examples

log = logging.getLogger("fedinterest.serve")

# ----------------------------------------------------------------------------- request schema


def _id_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string or an integer")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _action_code(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in tuple(Action):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in GENERIC_ACTIONS:
        return int(GENERIC_ACTIONS[value.strip().lower()])
    raise ValueError(f"unknown action {value!r}; use view (pv), fav, cart, buy or 0-3")


def _unix_seconds(value: int) -> int:
    if not MIN_SECONDS <= value < MAX_SECONDS:
        raise ValueError(f"{value} is not Unix seconds between 1990-01-01 and 2100-01-01")
    return value


IdText = Annotated[str, BeforeValidator(_id_text)]
ActionCode = Annotated[int, BeforeValidator(_action_code)]
UnixSeconds = Annotated[int, Strict(), AfterValidator(_unix_seconds)]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: UnixSeconds
    category: IdText
    action: ActionCode
    item_id: IdText | None = None


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: IdText
    events: list[EventIn]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[UserIn]
    at: UnixSeconds | None = None


# ----------------------------------------------------------------------------- validation


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and one message per problem."""

    def __init__(self, status: int, messages: list[str]):
        super().__init__(messages[0])
        self.status, self.messages = status, messages

    def body(self) -> dict:
        more = len(self.messages) - 1
        summary = self.messages[0] + (f" (and {more} more)" if more else "")
        return {"error": summary, "errors": self.messages[:20]}


@dataclass(frozen=True)
class Limits:
    max_users: int = 256
    max_events: int = 2000
    max_body_bytes: int = 8 << 20


@dataclass(frozen=True)
class Query:
    """One request's users as flat event columns (``owner`` indexes ``user_ids``) and its time."""

    user_ids: tuple[str, ...]
    owner: np.ndarray
    timestamp: np.ndarray
    category: list[str]
    action: np.ndarray
    item: list[str]
    at: int

    @property
    def size(self) -> int:
        return len(self.user_ids)


def field_path(loc: tuple) -> str:
    """``("users", 0, "events", 3, "timestamp")`` -> ``users[0].events[3].timestamp``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validation_messages(errors: list[dict], skip: tuple = ()) -> list[str]:
    """One ``field: reason`` line per pydantic error (``skip``: leading loc parts to drop, e.g. body)."""
    out = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if loc[: len(skip)] == skip:
            loc = loc[len(skip):]
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "model_type":
            message = "must be a JSON object"
        out.append(f"{field_path(loc)}: {message}")
    return out


def parse_request(body: bytes, limits: Limits, stride: int) -> Query:
    """The request body as a ``Query``; ``RequestError`` (400 or 422) naming the field otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RequestError(400, [f"body: not valid JSON ({exc})"]) from None
    except ValueError:  # Python refuses integers of more than 4300 digits: valid JSON, absurd content
        raise RequestError(422, ["body: holds a number too large to be an id or a timestamp"]) from None
    try:
        request = PredictRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestError(422, validation_messages(exc.errors())) from None
    return to_query(request, limits, stride)


def to_query(request: PredictRequest, limits: Limits, stride: int) -> Query:
    """Check the limits and flatten the events; the default ``at`` is ``predict``'s for these events."""
    problems = []
    if not request.users:
        problems.append("users: empty; send at least one user")
    if len(request.users) > limits.max_users:
        problems.append(f"users: {len(request.users)} users; at most {limits.max_users} per request")
    seen: set[str] = set()
    for i, user in enumerate(request.users):
        if user.user_id in seen:
            problems.append(f"users[{i}].user_id: {user.user_id!r} appears twice; send each user once")
        seen.add(user.user_id)
        if not user.events:
            problems.append(f"users[{i}].events: empty; send the user's recent events")
        elif len(user.events) > limits.max_events:
            problems.append(f"users[{i}].events: {len(user.events)} events; at most {limits.max_events} per user")
    if problems:
        raise RequestError(422, problems)
    events = [(i, e) for i, user in enumerate(request.users) for e in user.events]
    timestamp = np.array([e.timestamp for _, e in events], dtype=np.int64)
    return Query(
        user_ids=tuple(user.user_id for user in request.users),
        owner=np.array([i for i, _ in events], dtype=np.int64),
        timestamp=timestamp,
        category=[e.category for _, e in events],
        action=np.array([e.action for _, e in events], dtype=np.int8),
        item=[e.item_id or "" for _, e in events],
        at=request.at if request.at is not None else prediction_time(timestamp, stride),
    )


# ----------------------------------------------------------------------------- scoring


def batch_table(queries: list[Query]) -> tuple[EventTable, np.ndarray]:
    """All queries' events as one table; user keys are the batch positions, zero-padded."""
    offsets = np.cumsum([0] + [q.size for q in queries])
    owner = np.concatenate([q.owner + offset for q, offset in zip(queries, offsets)])
    width = len(str(max(int(offsets[-1]) - 1, 0)))
    table = EventTable.from_records({
        "user_id": np.char.zfill(owner.astype(str), width),
        "item_id": [item for q in queries for item in q.item],
        "category": [category for q in queries for category in q.category],
        "action": np.concatenate([q.action for q in queries]),
        "timestamp": np.concatenate([q.timestamp for q in queries]),
    }, source="request")
    return table, offsets


def concat_examples(events: EventArrays, parts: list[ExampleSet]) -> ExampleSet:
    fields = ("user", "t", "hist_start", "hist_end", "target_end", "label", "current")
    return ExampleSet(events, **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})


def score_queries(predictor: Predictor, names: dict[str, str], queries: list[Query],
                  batch_size: int = 64) -> list[list[dict]]:
    """Per query, one result per user (in request order); one forward pass per ``batch_size`` users."""
    taxonomy, config = predictor.taxonomy, predictor.config
    table, offsets = batch_table(queries)
    events = EventArrays.from_table(table, taxonomy)
    at_of = np.repeat([q.at for q in queries], [q.size for q in queries])  # by batch position
    parts = []
    for at in np.unique(at_of):
        examples = latest_examples(events, config, int(at))
        position = events.user_ids[examples.user].astype(np.int64)
        parts.append(examples.subset(at_of[position] == at))
    examples = concat_examples(events, parts)
    probs = score_examples(predictor, examples, names, batch_size=batch_size)
    ranked = rank(probs, examples.current, taxonomy.other)
    class_names, ids = taxonomy.class_names, (*taxonomy.categories, None)  # `other` has no id
    top_p, p_migrate = np.round(ranked.top_p, 6).tolist(), np.round(ranked.p_migrate, 6).tolist()  # as predict
    scored: dict[int, dict] = {}
    for row, position in enumerate(events.user_ids[examples.user].astype(np.int64).tolist()):
        scored[position] = {
            "current_interest": class_names[int(examples.current[row])],
            "top5": [{"category": class_names[c], "category_id": ids[c], "p": p}
                     for c, p in zip(ranked.top[row].tolist(), top_p[row])],
            "p_migrate": p_migrate[row],
            "reason": None,
        }
    out = []
    for q, offset in zip(queries, offsets):
        results = []
        for i, user_id in enumerate(q.user_ids):
            result = scored.get(int(offset) + i)
            if result is None:
                before = int(np.sum(q.timestamp[q.owner == i] < q.at))
                result = {"current_interest": None, "top5": None, "p_migrate": None,
                          "reason": f"{before} event{'s' * (before != 1)} before {q.at}; "
                                    f"at least {config.min_history} needed"}
            results.append({"user_id": user_id, "prediction_time": q.at, **result})
        out.append(results)
    return out


# ----------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    query: Query
    future: asyncio.Future


class Batcher:
    """Gathers queries for up to ``max_wait`` seconds or ``max_batch`` users and scores them together.

    One scoring call runs at a time, on a worker thread; queries that arrive meanwhile form the
    next batch. A query larger than ``max_batch`` is scored alone.
    """

    def __init__(self, score: Callable[[list[Query]], list[list[dict]]], max_batch: int, max_wait: float,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.score, self.max_batch, self.max_wait, self.on_batch = score, max_batch, max_wait, on_batch
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fedinterest-score")

    async def submit(self, query: Query) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(query, future))
        self._arrived.set()
        return await future

    def _waiting(self) -> int:
        return sum(p.query.size for p in self._pending)

    def _take(self) -> list[_Pending]:
        batch, size = [], 0
        while self._pending and (not batch or size + self._pending[0].query.size <= self.max_batch):
            item = self._pending.popleft()
            size += item.query.size
            batch.append(item)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while self._waiting() < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [p for p in self._take() if not p.future.done()]  # done: the client went away
            if self._pending:
                self._arrived.set()
            else:
                self._arrived.clear()
            if not batch:
                continue
            self.on_batch(sum(p.query.size for p in batch))
            await self._score(loop, batch)

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            results = await loop.run_in_executor(self._executor, self.score, [p.query for p in batch])
        except Exception as exc:  # handed to the waiting request
            if len(batch) > 1:  # one at a time, so a query that breaks scoring fails only its own request
                for p in batch:
                    await self._score(loop, [p])
                return
            log.error("scoring a request failed", exc_info=exc)
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result(result)

    def close(self) -> None:
        for p in self._pending:
            p.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------- metrics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Metrics:
    """Counters for ``/metrics``; only the event loop thread touches them."""

    labels: dict[str, str] = field(default_factory=dict)
    requests: collections.Counter = field(default_factory=collections.Counter)  # (path, status)
    users: collections.Counter = field(default_factory=collections.Counter)  # outcome
    batches: int = 0
    batch_users: int = 0
    batch_buckets: list[int] = field(default_factory=lambda: [0] * len(BATCH_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        if path == "/predict" and status == 200:
            self.latency_sum += seconds
            self.latency_count += 1
            self.recent.append(seconds)

    def observe_batch(self, size: int) -> None:
        self.batches += 1
        self.batch_users += size
        for i, bound in enumerate(BATCH_BUCKETS):
            if size <= bound:
                self.batch_buckets[i] += 1

    def render(self) -> str:
        """Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        info = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels.items())
        metric("fedinterest_model_info", "gauge", "The served model.", [(f"{{{info}}}", 1)])
        by_request = sorted(self.requests.items())
        metric("fedinterest_http_requests_total", "counter", "HTTP requests by path and status.",
               [(f'{{path="{p}",status="{s}"}}', n) for (p, s), n in by_request])
        metric("fedinterest_http_errors_total", "counter", "HTTP responses with status 4xx or 5xx, by status.",
               sorted(_errors_by_status(self.requests).items()))
        metric("fedinterest_predict_users_total", "counter", "Users in /predict requests by outcome.",
               [(f'{{outcome="{k}"}}', n) for k, n in sorted(self.users.items())])
        metric("fedinterest_batches_total", "counter", "Forward passes (batches) run.", [("", self.batches)])
        cumulative = [(f'_bucket{{le="{b}"}}', n) for b, n in zip(BATCH_BUCKETS, self.batch_buckets)]
        lines.extend(["# HELP fedinterest_batch_size Users scored per batch.",
                      "# TYPE fedinterest_batch_size histogram"])
        lines.extend(f"fedinterest_batch_size{suffix} {n}" for suffix, n in cumulative)
        lines.append(f'fedinterest_batch_size_bucket{{le="+Inf"}} {self.batches}')
        lines.append(f"fedinterest_batch_size_sum {self.batch_users}")
        lines.append(f"fedinterest_batch_size_count {self.batches}")
        recent = np.array(self.recent, dtype=np.float64)
        quantiles = [(f'{{quantile="{q}"}}', float(np.quantile(recent, q)) if len(recent) else float("nan"))
                     for q in QUANTILES]
        lines.append("# HELP fedinterest_predict_latency_seconds Latency of answered /predict requests "
                     f"(quantiles over the last {self.recent.maxlen}).")
        lines.append("# TYPE fedinterest_predict_latency_seconds summary")
        lines.extend(f"fedinterest_predict_latency_seconds{labels} {_number(v)}" for labels, v in quantiles)
        lines.append(f"fedinterest_predict_latency_seconds_sum {_number(self.latency_sum)}")
        lines.append(f"fedinterest_predict_latency_seconds_count {self.latency_count}")
        return "\n".join(lines) + "\n"


def _errors_by_status(requests: collections.Counter) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    for (_, status), n in requests.items():
        if status >= 400:
            out[f'{{status="{status}"}}'] += n
    return dict(out)


def _number(value: float) -> str:
    if isinstance(value, float) and np.isnan(value):
        return "NaN"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ----------------------------------------------------------------------------- the app

ROUTES = ("/predict", "/health", "/metrics", "/docs", "/openapi.json")
LARGE_BODY = 256 << 10


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 64
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)


def category_names(predictor: Predictor, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The words each category id renders as: the taxonomy's names, then ``extra`` (a names file)."""
    return {**dict(zip(predictor.taxonomy.categories, predictor.taxonomy.names)), **(extra or {})}


def public_identity(predictor: Predictor) -> dict[str, str]:
    """What the server says about its model to anyone who asks: no path on this machine.

    The adapter is named by a digest of its weights; a backbone given as a directory by its last part.
    """
    import hashlib

    from fedinterest.server.export import ADAPTER

    weights = Path(predictor.export) / ADAPTER / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "unknown"
    backbone = str(predictor.backbone)
    if "/" in backbone or "\\" in backbone:
        backbone = Path(backbone).name
    return {"backbone": backbone, "adapter": f"sha256:{digest}"}


def create_app(predictor: Predictor, names: dict[str, str], settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI app serving ``predictor``; ``names`` as from ``category_names``."""
    identity = public_identity(predictor)
    metrics = Metrics(labels={"backbone": identity["backbone"], "device": predictor.device,
                              "adapter": identity["adapter"]})
    batcher: Batcher | None = None
    limits, stride = settings.limits, predictor.config.stride_seconds

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(lambda queries: score_queries(predictor, names, queries, settings.max_batch),
                          settings.max_batch, settings.max_wait_ms / 1000.0, metrics.observe_batch)
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    app = FastAPI(title="fedinterest", summary="Next-interest predictions from a federated adapter",
                  lifespan=lifespan)

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return error(RequestError(status, validation_messages(errors, skip=("body",)) or ["body: invalid"]))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    app.add_middleware(CountRequests, metrics=metrics)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **identity, "device": predictor.device, "classes": predictor.taxonomy.n_classes,
                "min_history": predictor.config.min_history, "max_batch": settings.max_batch}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Top-5 next categories and P(migrate) per user; the body is a ``PredictRequest``."""
        body = await read_body(request, limits.max_body_bytes)
        if len(body) > LARGE_BODY:  # validating ~10^5 events takes a while: off the event loop
            query = await asyncio.to_thread(parse_request, body, limits, stride)
        else:
            query = parse_request(body, limits, stride)
        assert batcher is not None
        results = await batcher.submit(query)
        for result in results:
            metrics.users["scored" if result["reason"] is None else "too_little_history"] += 1
        return JSONResponse({"predictions": results})  # plain JSON types: no jsonable_encoder pass

    return app


class CountRequests:
    """ASGI middleware: every HTTP request's path, status and duration into ``metrics``."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # 500 unless a response starts

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - started)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ``RequestError(413)`` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, [f"body: {int(declared):,} bytes; at most {limit:,} (--max-body-mb)"])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, [f"body: over {limit:,} bytes (--max-body-mb)"])
        chunks.append(chunk)
    return b"".join(chunks)
