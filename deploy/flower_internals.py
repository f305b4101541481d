"""Every internal Flower API this project uses, in one place (written against flwr 1.42).

The SuperNode's runtime API (how a task runner claims a task and exchanges its message and
context), the FAB builder and the SuperLink's Fleet routes are not Flower's public API: a Flower
upgrade may move them, and then this module is the one that breaks (``pyproject.toml`` pins
``flwr`` to 1.42.x for that reason).

Two of Flower's helpers are deliberately not used: ``make_task_heartbeat_fn_http`` and
``make_simple_http_retry_invoker`` raise SIGINT in their own process when the SuperNode drops a
task or answers 401, which suits a ``flwr-clientapp`` process per message and would stop our
long-lived runner. :class:`TaskHeartbeat` and :func:`bounded_retries` replace them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import httpx
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("fedinterest.node")

#: The one runtime method a SuperExec signs with the shared secret (Flower's ``_SUPEREXEC_AUTH_METHODS``).
ACQUIRE_TASK_METHOD = "/flwr.proto.Runtime/AcquireTask"
COMPONENT = "fedinterest-node-runner"
COMPLETED, FAILED = SubStatus.COMPLETED, SubStatus.FAILED
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})

__all__ = ["AcquiredTask", "COMPLETED", "FAILED", "TaskHeartbeat", "acquire_clientapp_task", "acquire_client",
           "fab_sha256", "fleet_routes", "pull_task_input", "push_message", "push_task_output", "task_client"]


def fab_sha256(app_dir: Path) -> str:
    """The sha256 of the FAB ``flwr run`` builds from ``app_dir`` (a deterministic zip)."""
    import warnings

    with warnings.catch_warnings():  # pathspec's deprecation of the pattern style Flower 1.42 asks for
        warnings.simplefilter("ignore", DeprecationWarning)
        return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def fleet_routes() -> frozenset[str]:
    """The paths of the SuperLink's Fleet API, as Flower's own router declares them."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(route.path for route in router.routes if "POST" in getattr(route, "methods", ()))


def bounded_retries(max_time: float = 60.0) -> RetryInvoker:
    """Retry transport errors and 429/502/503/504 for up to ``max_time`` seconds; give up on anything else."""

    def give_up(exc: Exception) -> bool:
        return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in _RETRYABLE_STATUS

    return RetryInvoker(lambda: exponential(max_delay=5), (httpx.TransportError, httpx.HTTPStatusError),
                        max_tries=None, max_time=max_time, should_giveup=give_up)


def acquire_client(runtime_address: str, secret: bytes) -> RuntimeHttpClient:
    """A client of the SuperNode's runtime API that may claim tasks (signed with the SuperExec secret)."""
    return RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=COMPONENT),
                      SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK_METHOD})],
    )


def task_client(runtime_address: str, token: str) -> RuntimeHttpClient:
    """A client of the SuperNode's runtime API for one claimed task (authorised by its token)."""
    return RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=COMPONENT), RuntimeTokenHttpInterceptor(token)],
        retry_invoker=bounded_retries(),
    )


@dataclass(frozen=True)
class AcquiredTask:
    """A ClientApp task the SuperNode handed over: which run, which app bundle, and its token."""

    task_id: int
    run_id: int
    fab_hash: str
    token: str


def acquire_clientapp_task(client: RuntimeHttpClient) -> AcquiredTask | None:
    """Claim the oldest pending ClientApp task, or None when there is none."""
    response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP],
                                                     agentapp_fab_hashes=[]))
    if not response.HasField("task") or not response.token:
        return None
    task = response.task
    return AcquiredTask(task_id=int(task.task_id), run_id=int(task.run_id),
                        fab_hash=task.fab_hash if task.HasField("fab_hash") else "", token=response.token)


class TaskHeartbeat:
    """Keeps one claimed task alive on the SuperNode while it runs (a background thread)."""

    def __init__(self, client: RuntimeHttpClient, task: AcquiredTask) -> None:
        self._client, self._task, self._lost = client, task, False
        self._sender = HeartbeatSender(self._beat)

    def _beat(self) -> bool:
        try:
            response = self._client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.TransportError:
            return False  # retried with backoff until the task ends
        except httpx.HTTPError as err:
            self._report(f"the SuperNode refused its heartbeat ({err})")
            return True
        if not response.success:
            self._report("the SuperNode no longer holds it (expired, or its run stopped)")
        return True

    def _report(self, what: str) -> None:
        if not self._lost:
            self._lost = True
            log.warning("task %s of run %s: %s", self._task.task_id, self._task.run_id, what)

    def __enter__(self) -> "TaskHeartbeat":
        self._sender.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._sender.is_running:
            self._sender.stop()
