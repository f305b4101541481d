"""Honest SecAgg+ parties for tests: a server and clients with identities on one roster."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from fedinterest.common.secagg import Identity, Roster, SecAggClient, SecAggConfig, SecAggPolicy, SecAggServer, SeededRandomness


def identities(ids, seed) -> dict[int, Identity]:
    return {i: Identity.generate(SeededRandomness(seed, "identity", i)) for i in ids}


def policy_for(config: SecAggConfig) -> SecAggPolicy:
    """Floors equal to ``config``: the honest server's proposal just passes them."""
    return SecAggPolicy(min_clients=max(config.min_clients, 3), max_clip=config.clip, max_weight=config.max_weight)


def manual_round(n, config, seed, round_id=1, run_id=0, ids=None):
    """``(server, clients)`` for one round; every client pins the roster of all of them."""
    ids = list(range(n)) if ids is None else list(ids)
    keys = identities(ids, seed)
    roster = Roster({f"shop-{i}": keys[i].public_key for i in ids})
    server = SecAggServer(config, round_id, ids, run_id, roster)
    clients = {i: SecAggClient(i, keys[i], roster, policy_for(config), run_id, SeededRandomness(seed, "client", i))
               for i in ids}
    return server, clients


def run_to_signatures(server, clients, vectors, weight=1):
    """Stages 1-3 with every client honest and live; returns the consistency requests."""
    setup = server.setup()
    keys = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in keys.items()])
    return server.collect_masked_inputs([clients[i].mask_input(m, np.asarray(vectors[i]), weight)
                                         for i, m in relays.items()])


def run_to_unmask(server, clients, vectors, weight=1):
    """Stages 1-4 with every client honest and live; returns the unmask requests."""
    checks = run_to_signatures(server, clients, vectors, weight)
    return server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])


@contextmanager
def flower_task(run_id: int):
    """Flower's task identity set to ``run_id``, as in a running app: messages built here carry it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
