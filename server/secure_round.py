"""One federated training round under SecAgg+, driven over Flower's ``Grid``.

Five ``send_and_receive`` exchanges (``common.wire``): ``train`` (local training + signed keys),
``train.share_keys``, ``train.masked_input``, ``train.consistency`` and ``train.unmask``, each with
a timeout. A reply that is missing, an error, late, malformed, of the wrong shape, or that makes
its handling raise anything at all makes its sender a dropout of that stage; a client the
protocol finds misbehaving is excluded; the protocol then recovers, or aborts the round cleanly
(no update, nothing revealed). Shops that decline (privacy budget) simply do not take part. The
server only ever holds masked vectors and their running sum.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from flwr.app import Message, RecordDict

from fedinterest.common import wire
from fedinterest.common.secagg import (
    ConsistencySignature, KeyAdvertisement, MaskedInput, Roster, SecAggConfig, SecAggError, SecAggServer,
    ShareDistribution, SignatureCache, UnmaskResponse,
)

log = logging.getLogger("fedinterest.server")

#: Called with (message type, node id, reply content) for every reply that arrives.
ReplyObserver = Callable[[str, int, RecordDict], None]


@dataclass
class SecureRoundResult:
    mean_update: np.ndarray | None = None
    weighted_sum: np.ndarray | None = None
    total_weight: int = 0
    contributors: list[int] = field(default_factory=list)
    declined: dict[int, int] = field(default_factory=dict)  # node -> decline code
    dropped: dict[int, str] = field(default_factory=dict)  # node -> why
    train_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    aborted: str | None = None
    culprits: list[int] = field(default_factory=list)  # shops shown to have dealt shares that rebuild nothing
    projected: bool = False  # the sum lay outside what honest inputs give (a crafted input) and was projected
    bytes_down: int = 0
    bytes_up: int = 0


def content_nbytes(content: RecordDict) -> int:
    """Payload bytes of a message: array bytes plus scalar and byte-string values (nothing is decoded)."""
    total = 0
    for record in content.values():
        for key, value in record.items():
            total += len(key)
            if hasattr(value, "numpy"):
                total += len(getattr(value, "data", b""))
            elif isinstance(value, (bytes, str)):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in value)
            else:
                total += 8
    return total


#: Seconds between two pulls of the replies to an exchange (Flower's ``send_and_receive`` waits 3 s).
PULL_INTERVAL = 0.2


def exchange(grid, messages: list[Message], timeout: float, interval: float = PULL_INTERVAL) -> list[Message]:
    """Push ``messages``, then pull their replies every ``interval`` seconds until all are in or ``timeout`` passes.

    What ``Grid.send_and_receive`` does, polling the SuperLink's loopback API more often: a stage
    ends a fraction of a second after its last reply, not up to 3 s later (a round has five stages).
    """
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return replies


class SecureRound:
    """Drive one round: ``run(train_content)`` returns the decoded weighted mean update."""

    def __init__(
        self,
        grid,
        nodes: list[int],
        config: SecAggConfig,
        round_id: int,
        timeout: float,
        observe: ReplyObserver | None = None,
        stages: tuple[str, ...] = wire.TRAIN_STAGES,
        roster: Roster | None = None,
        verified: SignatureCache | None = None,
    ):
        """``stages``: the five message types (``wire.TRAIN_STAGES`` or ``QUERY_STAGES``); ``roster``: the
        federation's roster, to exclude unlisted shops early (each shop checks its own copy anyway);
        ``verified``: the run's cache of checked batch signatures, kept across its rounds."""
        self.grid, self.nodes, self.config, self.round_id = grid, nodes, config, round_id
        self.stages = stages
        self.timeout, self.observe = timeout, observe
        run_id = int(getattr(getattr(grid, "run", None), "run_id", 0) or 0)
        self.server = SecAggServer(config, round_id, nodes, run_id, roster, verified)
        self.result = SecureRoundResult()

    # ------------------------------------------------------------------ transport

    def _exchange(self, message_type: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send one message per node, wait for replies; errors and silence become dropouts."""
        messages = [Message(content, node, message_type, group_id=str(self.round_id)) for node, content in contents.items()]
        self.result.bytes_down += sum(content_nbytes(c) for c in contents.values())
        replies: dict[int, RecordDict] = {}
        for reply in exchange(self.grid, messages, self.timeout):
            try:
                node = reply.metadata.src_node_id
                if node not in contents or node in replies or node in self.result.dropped:
                    continue
                if reply.has_error():
                    code = int(reply.error.code)
                    self.result.dropped[node] = f"{message_type}: {wire.ERROR_CODES.get(code, f'error code {code}')}"
                    continue
                self.result.bytes_up += content_nbytes(reply.content)
                masked = self.config.masked_length if message_type == self.stages[2] else None
                problems = wire.audit_reply(message_type, reply.content, masked)
                if problems:
                    self.result.dropped[node] = "; ".join(problems)[:300]
                    continue
                if self.observe is not None:  # only what the audit let through is ever kept
                    self.observe(message_type, node, reply.content)
                replies[node] = reply.content
            except Exception as exc:  # noqa: BLE001 - one client's reply never ends the round
                node = getattr(getattr(reply, "metadata", None), "src_node_id", None)
                if node in contents:
                    replies.pop(node, None)
                    self.result.dropped[node] = f"{message_type}: unreadable reply ({type(exc).__name__})"
        for node in contents:
            if node not in replies and node not in self.result.dropped:
                self.result.dropped[node] = f"{message_type}: no reply within {self.timeout:g} s"
        return replies

    def _parse(self, replies: dict[int, RecordDict], cls) -> list:
        parsed = []
        for node, content in replies.items():
            try:
                message = wire.secagg_from_content(content, cls)
            except Exception as exc:  # noqa: BLE001 - SecAggError names the problem; anything else is malformed
                self.result.dropped[node] = (str(exc) if isinstance(exc, SecAggError) else type(exc).__name__)[:300]
                continue
            if message.client_id != node or message.round_id != self.round_id:
                self.result.dropped[node] = f"{cls.__name__} names client {message.client_id} round {message.round_id}"
                continue
            if cls is MaskedInput and message.masked.shape != (self.config.masked_length,):
                self.result.dropped[node] = f"masked input has shape {message.masked.shape}, expected ({self.config.masked_length},)"
                continue
            parsed.append(message)
        return parsed

    # ------------------------------------------------------------------ the round

    def run(self, train_content: Callable[[int], RecordDict]) -> SecureRoundResult:
        """``train_content(node)`` builds the opening message (``train``: global adapter, config, task)."""
        try:
            self._run(train_content)
        except SecAggError as exc:
            self.result.aborted = f"{type(exc).__name__}: {exc}"
            self.result.culprits = list(getattr(exc, "culprits", ()))
            self.result.mean_update = None
            log.warning("round %s aborted: %s", self.round_id, self.result.aborted)
        finally:
            for node, why in self.server.excluded.items():
                self.result.dropped.setdefault(node, f"excluded: {why}"[:300])
        return self.result

    def _run(self, train_content: Callable[[int], RecordDict]) -> None:
        setup = wire.secagg_to_records(self.server.setup())
        contents = {}
        for node in self.nodes:
            content = train_content(node)
            for name, record in setup.items():
                content[name] = record
            contents[node] = content
        opening, share_keys, masked_input, consistency, unmask = self.stages
        replies = self._exchange(opening, contents)
        for node, content in list(replies.items()):
            metrics = dict(content[wire.METRICS].items()) if wire.METRICS in content else {}
            self.result.train_metrics[node] = metrics
            if metrics.get("declined"):
                self.result.declined[node] = int(metrics.get("decline_code", 0))
                del replies[node]
        advertisements = self._parse(replies, KeyAdvertisement)

        broadcasts = self.server.collect_keys(advertisements)
        replies = self._exchange(share_keys, self._records(broadcasts))
        relays = self.server.collect_shares(self._parse(replies, ShareDistribution))
        replies = self._exchange(masked_input, self._records(relays))
        checks = self.server.collect_masked_inputs(self._parse(replies, MaskedInput))
        replies = self._exchange(consistency, self._records(checks))
        requests = self.server.collect_signatures(self._parse(replies, ConsistencySignature))
        replies = self._exchange(unmask, self._records(requests))
        aggregate = self.server.collect_unmask_responses(self._parse(replies, UnmaskResponse))
        self.result.contributors = list(aggregate.contributors)
        self.result.projected = aggregate.projected
        self.result.total_weight = int(aggregate.total_weight)
        self.result.weighted_sum = np.asarray(aggregate.weighted_sum, dtype=np.float64)
        if aggregate.total_weight > 0:
            self.result.mean_update = np.asarray(aggregate.mean, dtype=np.float64)

    @staticmethod
    def _records(messages: dict) -> dict[int, RecordDict]:
        return {node: RecordDict(wire.secagg_to_records(message)) for node, message in messages.items()}
