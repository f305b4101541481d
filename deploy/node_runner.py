"""A merchant node's task runner: the installed ClientApp, for the pinned app bundle only.

``fedinterest node start`` runs ``flower-supernode --isolation process`` (which starts no app
process of its own) and this runner beside it, as its child::

    python -m deploy.node_runner --runtime 127.0.0.1:PORT --secret-file DIR/superexec.secret --app-hash SHA256

Like Flower's SuperExec it polls the SuperNode's runtime API for ClientApp tasks, signed with the
node's SuperExec secret. Each task names the sha256 of its run's app bundle (the SuperNode stores
bundles under their verified hash). A task of any other bundle than the pinned one is answered
with ``wire.ERROR_UNTRUSTED_APP``: nothing of that bundle is unpacked, installed or imported. A
task of the pinned bundle runs the ClientApp of the installed release (``client.app.app``), never
the bundle's copy, in this process: the runner lives as long as the node, so torch and the model
load once, not once per message. An exception in the ClientApp is answered with an error reply
(``wire.ERROR_INTERNAL``; the traceback stays in this log) and the runner goes on.

Each task is answered in a thread of its own, the ClientApp called by one thread at a time: a
task whose message never arrives (its run stopped while the SuperNode was receiving it, e.g. a
platform that crashed) waits for it without holding up the tasks after it, as Flower's own
process per task would.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

from fedinterest.client.node import DEPLOYED_ENV
from fedinterest.common import wire
from fedinterest.common.config import ConfigError

log = logging.getLogger("fedinterest.node")

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # the variable Flower's SuperExec reads, with its bounds
POLL_DEFAULT, POLL_MIN, POLL_MAX = 1.0, 0.01, 60.0
MAX_IN_FLIGHT = 8  # tasks being answered at once (the SuperNode hands over one live message at a time)


def poll_interval(env: dict | None = None) -> float:
    """Seconds between polls for a task: ``$FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (default 1)."""
    raw = (os.environ if env is None else env).get(POLL_ENV)
    if raw is None:
        return POLL_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and POLL_MIN <= value <= POLL_MAX):
        raise ConfigError(f"{POLL_ENV}={raw!r}: give the seconds between task polls, from {POLL_MIN} to {POLL_MAX}")
    return value


def read_secret(path: Path) -> bytes:
    try:
        secret = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the SuperExec secret ({err.strerror}); `fedinterest node start` "
                          "makes it") from None
    if len(secret) < 16:
        raise ConfigError(f"{path}: the SuperExec secret is shorter than 16 bytes; delete it and start the node again")
    return secret


class TaskRunner:
    """Claims the SuperNode's ClientApp tasks and answers each (see the module docstring)."""

    def __init__(self, runtime_address: str, secret: bytes, pinned: str, app: Callable) -> None:
        from . import flower_internals as internals

        self.address, self.pinned, self.app = runtime_address, pinned, app
        self._internals = internals
        self._acquire = internals.acquire_client(runtime_address, secret)
        self._app_lock, self._count_lock = threading.Lock(), threading.Lock()
        self._in_flight: list[threading.Thread] = []
        self.served = self.refused = 0

    def close(self, wait: float = 10.0) -> None:
        """Give the tasks in progress up to ``wait`` seconds, then let them go with the process."""
        deadline = time.monotonic() + wait
        for thread in self._in_flight:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._acquire.close()

    def run_once(self) -> bool:
        """Claim one task and start answering it; False when none is pending (or too many are in progress)."""
        self._in_flight = [thread for thread in self._in_flight if thread.is_alive()]
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            return False
        task = self._internals.acquire_clientapp_task(self._acquire)
        if task is None:
            return False
        trusted = task.fab_hash == self.pinned
        if not trusted:  # decided before anything of the run is pulled
            log.error("REFUSED task %s of run %s: its app bundle (sha256 %s) is not the release this shop "
                      "installed (pinned sha256 %s); none of its code runs here", task.task_id, task.run_id,
                      task.fab_hash or "(none)", self.pinned)
        thread = threading.Thread(target=self.answer, args=(task, trusted), name=f"task-{task.task_id}",
                                  daemon=True)
        thread.start()
        self._in_flight.append(thread)
        return True

    def answer(self, task, trusted: bool) -> None:
        """Pull the task's message, answer it (the installed ClientApp, or a refusal), hand back the context."""
        internals = self._internals
        client = internals.task_client(self.address, task.token)
        context, status, details = None, internals.FAILED, "the task failed on the node"
        try:
            with internals.TaskHeartbeat(client, task):
                message, context, fab_hash = internals.pull_task_input(client)
                if trusted and fab_hash != self.pinned:
                    log.error("REFUSED task %s of run %s: the bundle the SuperNode holds hashes to %s, not the pinned "
                              "sha256 %s", task.task_id, task.run_id, fab_hash, self.pinned)
                    trusted = False
                if trusted:
                    reply, status, details = self.run_app(task, message, context)
                else:
                    reply = _error_reply(message, wire.ERROR_UNTRUSTED_APP)
                    details = wire.ERROR_CODES[wire.ERROR_UNTRUSTED_APP]
                    with self._count_lock:
                        self.refused += 1
                internals.push_message(client, reply, context)
        except Exception:  # noqa: BLE001 - a failed exchange with the SuperNode costs this task only
            log.exception("task %s of run %s: the exchange with the SuperNode failed", task.task_id, task.run_id)
            status = internals.FAILED
        finally:
            internals.push_task_output(client, context, status, details)
            client.close()

    def run_app(self, task, message, context):
        """The installed ClientApp's reply (one call at a time), or an error reply if it raises."""
        with self._app_lock:
            self._internals.set_task_identity(task, context.node_id)
            try:
                reply = self.app(message=message, context=context)
            except Exception:  # noqa: BLE001 - the runner outlives a failing ClientApp, like a fresh process would
                log.exception("the ClientApp raised on a %s message of run %s", message.metadata.message_type,
                              message.metadata.run_id)
                return (_error_reply(message, wire.ERROR_INTERNAL), self._internals.FAILED,
                        wire.ERROR_CODES[wire.ERROR_INTERNAL])
            self.served += 1
        log.info("answered task of run %s: %s", message.metadata.run_id, message.metadata.message_type)
        return reply, self._internals.COMPLETED, ""


def _error_reply(message, code: int):
    from flwr.app import Error, Message

    return Message(Error(code=code, reason=wire.ERROR_CODES[code]), reply_to=message)


def serve(runner: TaskRunner, interval: float, stop: threading.Event, parent_pid: int | None = None) -> int:
    """Answer tasks until ``stop`` is set or the parent process (``node start``) is gone."""
    waiting_logged = False
    while not stop.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("node start (pid %s) is gone; the task runner stops", parent_pid)
            return 1
        try:
            worked = runner.run_once()
            waiting_logged = False
        except httpx.TransportError:
            worked = False  # the SuperNode is starting or restarting
            if not waiting_logged:
                log.info("waiting for the SuperNode's runtime API on %s", runner.address)
                waiting_logged = True
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (401, 403):
                log.error("the SuperNode refused this runner (HTTP %s): its SuperExec secret does not match the "
                          "SuperNode's", err.response.status_code)
                return 2
            log.warning("claiming a task failed: HTTP %s", err.response.status_code)
            worked = False
        except Exception:  # noqa: BLE001 - an unreadable answer costs one poll, not the node
            log.exception("claiming a task failed")
            worked = False
        if not worked:
            stop.wait(interval)
    return 0


def load_installed_app() -> Callable:
    """The ClientApp of the installed release, and the trainer it loads (torch, transformers) once, now."""
    from fedinterest.client.app import app
    import fedinterest.client.shop  # noqa: F401 - imported here once, not in the first round

    return app


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)-5s [node-runner] %(message)s"))
    root = logging.getLogger("fedinterest")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.node_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", required=True, metavar="HOST:PORT", help="the SuperNode's runtime API")
    parser.add_argument("--secret-file", required=True, type=Path, help="the SuperExec secret the SuperNode checks")
    parser.add_argument("--app-hash", required=True, help="sha256 of the only app bundle this node serves")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        interval = poll_interval()
        secret = read_secret(args.secret_file)
        if len(args.app_hash) != 64:
            raise ConfigError(f"--app-hash {args.app_hash!r}: give the 64 hex digits of a sha256")
    except ConfigError as err:
        log.error("%s", err)
        return 2
    stop, serving = threading.Event(), threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()  # a task in progress finishes first
        if not serving.is_set():
            raise SystemExit(0)  # still loading the app: nothing to finish

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    os.environ[DEPLOYED_ENV] = "1"  # the ClientApp refuses a seed on this node, however it is passed
    app = load_installed_app()
    runner = TaskRunner(args.runtime, secret, args.app_hash.lower(), app)
    serving.set()
    log.info("serving ClientApp tasks of app bundle sha256 %s only, with the installed ClientApp", runner.pinned)
    try:
        return serve(runner, interval, stop, args.parent_pid)
    finally:
        runner.close()
        log.info("task runner stopped: %s task(s) served, %s refused", runner.served, runner.refused)


if __name__ == "__main__":
    sys.exit(main())
