"""An in-memory SecAgg+ round: one server, many clients, every message through its record form.

For tests, simulations and the cost benchmark. Every message is turned into its flat record and
back (``to_record`` / ``from_record``), so what is counted and checked is what a transport would
carry. Dropouts are scripted per stage; ``intercept`` can alter or drop any message in transit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator, Mapping, Sequence

import numpy as np

from .client import SecAggClient
from .config import SecAggConfig
from .identity import Identity, Roster
from .messages import Message, Stage, record_nbytes
from .policy import SecAggPolicy
from .primitives import Randomness, SeededRandomness, default_randomness
from .server import AggregateResult, SecAggServer

Intercept = Callable[[Message], "Message | None"]


@dataclass
class RoundTrace:
    """The result of a round and what it cost."""

    result: AggregateResult
    excluded: dict[int, str] = field(default_factory=dict)  # clients the server left out, and why
    bytes_up: dict[int, int] = field(default_factory=dict)  # client -> server, all stages, per client
    bytes_down: dict[int, int] = field(default_factory=dict)  # server -> client
    client_seconds: dict[int, float] = field(default_factory=dict)  # protocol compute per client
    server_seconds: float = 0.0  # protocol compute of the server (excluding clients and transport)

    def wire_bytes(self, client_id: int) -> int:
        """Bytes one client sent and received in the round."""
        return self.bytes_up.get(client_id, 0) + self.bytes_down.get(client_id, 0)


def run_round(
    vectors: Sequence[np.ndarray],
    weights: Sequence[int] | None,
    config: SecAggConfig,
    *,
    round_id: int = 1,
    client_ids: Sequence[int] | None = None,
    dropouts: Mapping[Stage, Collection[int]] | None = None,
    seed: int | bytes | str | None = None,
    intercept: Intercept | None = None,
    identities: Mapping[int, Identity] | None = None,
    roster: Roster | None = None,
    policy: SecAggPolicy | None = None,
    run_id: int = 0,
) -> RoundTrace:
    """Run one full round and return the aggregate with its byte and time costs.

    ``vectors[k]`` and ``weights[k]`` (default 1) belong to ``client_ids[k]`` (default ``k``);
    ``vectors`` may be any lazy sequence, read only when that client masks its input.
    ``dropouts[stage]`` lists clients whose reply at ``stage`` never arrives (they are gone from
    then on): ``Stage.ADVERTISE_KEYS`` = never started, ``Stage.SHARE_KEYS`` = dropped after
    advertising keys, ``Stage.MASKED_INPUT`` = after sharing, ``Stage.UNMASK`` = after sending the
    masked input. ``seed`` makes every party's randomness deterministic (``os.urandom`` otherwise).
    Raises what the protocol raises (:class:`SecAggAbort` when too many clients drop); a client's
    refusal (e.g. :class:`SecAggIntegrityError`) propagates too, where a deployment would count
    that client as dropped.
    """
    ids = list(range(len(vectors))) if client_ids is None else list(client_ids)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} client ids")
    weights = [1] * len(ids) if weights is None else list(weights)
    if len(weights) != len(ids):
        raise ValueError(f"{len(weights)} weights for {len(ids)} clients")
    position = {client: k for k, client in enumerate(ids)}
    drop_at = {Stage(stage): set(members) for stage, members in (dropouts or {}).items()}

    def randomness(*labels: object) -> Randomness:
        return default_randomness if seed is None else SeededRandomness(seed, *map(str, labels))

    trace = RoundTrace(result=None)  # type: ignore[arg-type]
    outside_server = [0.0]  # time spent in clients and transport while the server consumes replies
    if identities is None:
        identities = {i: Identity.generate(None if seed is None else randomness("identity", i)) for i in ids}
    if roster is None:
        roster = Roster({f"shop-{i}": identities[i].public_key for i in ids})
    if policy is None:
        policy = SecAggPolicy(min_clients=max(config.min_clients, 3), max_clip=config.clip,
                              max_weight=config.max_weight)
    server = SecAggServer(config, round_id, ids, run_id, roster)
    clients = {i: SecAggClient(i, identities[i], roster, policy, run_id, randomness("client", i)) for i in ids}
    gone: set[int] = set()

    def transit(message: Message, client: int, direction: dict[int, int]) -> Message | None:
        record = message.to_record()
        direction[client] = direction.get(client, 0) + record_nbytes(record)
        decoded = type(message).from_record(record)
        return intercept(decoded) if intercept is not None else decoded

    def replies(
        stage: Stage, requests: Mapping[int, Message], act: Callable[..., Message],
        inputs: Callable[[int], tuple] = lambda client: (),
    ) -> Iterator[Message]:
        for client, request in requests.items():
            start = time.perf_counter()
            if client in gone or client in drop_at.get(stage, ()):
                gone.add(client)
                outside_server[0] += time.perf_counter() - start
                continue
            delivered = transit(request, client, trace.bytes_down)
            if delivered is None:
                continue
            arguments = inputs(client)  # reading the client's update is not protocol work
            begun = time.perf_counter()
            reply = act(clients[client], delivered, *arguments)
            trace.client_seconds[client] = trace.client_seconds.get(client, 0.0) + time.perf_counter() - begun
            answered = transit(reply, client, trace.bytes_up)
            outside_server[0] += time.perf_counter() - start
            if answered is not None:
                yield answered

    def server_step(step: Callable, *args: object):
        before, start = outside_server[0], time.perf_counter()
        out = step(*args)
        trace.server_seconds += time.perf_counter() - start - (outside_server[0] - before)
        return out

    setup = server_step(server.setup)
    keys = server_step(server.collect_keys, replies(Stage.ADVERTISE_KEYS, {i: setup for i in ids},
                                                    lambda c, m: c.advertise_keys(m)))
    relays = server_step(server.collect_shares, replies(Stage.SHARE_KEYS, keys, lambda c, m: c.share_keys(m)))
    checks = server_step(
        server.collect_masked_inputs,
        replies(Stage.MASKED_INPUT, relays, lambda c, m, x, w: c.mask_input(m, x, w),
                lambda client: (vectors[position[client]], weights[position[client]])),
    )
    requests = server_step(server.collect_signatures,
                           replies(Stage.CONSISTENCY, checks, lambda c, m: c.sign_survivors(m)))
    responses = replies(Stage.UNMASK, requests, lambda c, m: c.unmask(m))
    try:
        trace.result = server_step(server.collect_unmask_responses, responses)
    finally:
        trace.excluded = dict(server.excluded)
    return trace
