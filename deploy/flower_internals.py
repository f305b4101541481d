"""Every internal Flower API this project uses, in one place (written against flwr 1.42).

The SuperNode's runtime API (how a task runner claims a task and exchanges its message and
context), the FAB builder and the SuperLink's Fleet routes are not Flower's public API: a Flower
upgrade may move them, and then this module is the one that breaks (``pyproject.toml`` pins
``flwr`` to 1.42.x for that reason).

Three of Flower's helpers are deliberately not used, because they suit a ``flwr-clientapp``
process per message and not our long-lived runner: ``make_task_heartbeat_fn_http`` and
``make_simple_http_retry_invoker`` raise SIGINT in their own process when the SuperNode drops a
task or answers 401 (:class:`TaskHeartbeat` and :func:`bounded_retries` replace them), and
``run_clientapp.pull_task_input`` waits up to two hours for a message's objects, which never come
when the message's run has stopped (:func:`pull_task_input` bounds the wait).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import httpx
from flwr.cli.build import build_fab_from_disk
from flwr.app import Context, Message
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest, PullAppMessagesRequest, PullTaskInputRequest, SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

log = logging.getLogger("fedinterest.node")

#: The one runtime method a SuperExec signs with the shared secret (Flower's ``_SUPEREXEC_AUTH_METHODS``).
ACQUIRE_TASK_METHOD = "/flwr.proto.Runtime/AcquireTask"
COMPONENT = "fedinterest-node-runner"
COMPLETED, FAILED = SubStatus.COMPLETED, SubStatus.FAILED
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})

#: How long a task may wait for its message's objects (the SuperNode hands over a task before it has pulled
#: them from the SuperLink, and never pulls them if the run stopped meanwhile).
PULL_MAX_TIME = 600.0

__all__ = ["AcquiredTask", "COMPLETED", "FAILED", "TaskHeartbeat", "acquire_clientapp_task", "acquire_client",
           "fab_sha256", "fleet_routes", "pull_task_input", "push_message", "push_task_output", "set_task_identity",
           "task_client"]


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


def pull_task_input(client: RuntimeHttpClient, max_time: float = PULL_MAX_TIME) -> tuple[Message, Context, str]:
    """The task's message and context, and the sha256 of the bundle the SuperNode holds for its run.

    As Flower's ``run_clientapp.pull_task_input``, but the bundle is only hashed (never unpacked)
    and the wait for the message's objects is bounded by ``max_time`` seconds.
    """
    response = client.PullTaskInput(PullTaskInputRequest())
    context = context_from_proto(response.context)
    fab_hash = hashlib.sha256(fab_from_proto(response.fab).content).hexdigest()
    messages = client.PullMessages(PullAppMessagesRequest())
    if not messages.messages_list:
        raise RuntimeError("the SuperNode handed over a task without a message")
    node = Node(node_id=context.node_id)
    tree = messages.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, max_time=max_time)
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context, fab_hash


def set_task_identity(task: AcquiredTask, node_id: int) -> None:
    """Flower's process-wide task identity (new messages take their run and node from it), for ``task``."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task.task_id, task.run_id, node_id
