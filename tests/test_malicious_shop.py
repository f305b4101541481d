"""Malicious shops, and a server that seats its colluders, against the real SecAgg+ core.

Each test is one attack of the review (issue 23), run on the real clients and server; each shows
the attack fails, and where a test can also run the attack against the weaker rule it replaced,
it shows the attack was real:

- two colluders seated with a victim in a round the server packs open its update, unless the
  colluders are planned from the roster (``⌈γ · |roster|⌉``) rather than from the round;
- a shop advertising another's roster key under a junk signature excludes only itself;
- a liar among the lowest ids of sixteen, or an out-of-range weight, aborts nothing;
- a shop that deals garbage is named (``SecAggAbort.culprits``);
- one shop's crafted input moves the mean by at most twice the norm bound, and a statistics sum
  by at most twice its round's bound;
- neighbours shown different adapters refuse to unmask.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fedinterest.common.secagg.client as client_module
from fedinterest.common.secagg import (
    ClientState, Identity, Roster, SecAggAbort, SecAggClient, SecAggConfig, SecAggIntegrityError, SecAggPolicy,
    SecAggProtocolError, SecAggServer, SeededRandomness, UnmaskResponse, planned_colluders, run_round,
)
from fedinterest.common.secagg.graph import corrupt_neighbours, neighbour_graph
from fedinterest.common.secagg.masks import KEY_SHARE, SEED_SHARE, add_signed, pair_mask, pair_sign, self_mask, share_associated_data
from fedinterest.common.secagg.primitives import agree, commitment, open_once, private_key_from_bytes
from fedinterest.common.secagg.quantize import decode
from fedinterest.common.secagg.shamir import interpolate

D = 32


def roster_of(size: int, seed: int) -> tuple[dict[int, Identity], Roster]:
    identities = {i: Identity.generate(SeededRandomness(seed, "identity", i)) for i in range(size)}
    return identities, Roster({f"shop-{i:03d}": key.public_key for i, key in identities.items()})


def round_parties(members, roster_size, config, policy, seed, run_id=0):
    """A server and clients for ``members``, every client pinning the roster of ``roster_size`` shops."""
    identities, roster = roster_of(roster_size, seed)
    server = SecAggServer(config, 1, members, run_id, roster)
    clients = {i: SecAggClient(i, identities[i], roster, policy, run_id, SeededRandomness(seed, "client", i))
               for i in members}
    return server, clients


def opened_share(server: SecAggServer, owner: int, holder: int, kind: bytes, key: bytes) -> int:
    """What the server reads from the sealed share it relayed, with a holder's revealed key."""
    sealed = server._sealed[(owner, holder)][0 if kind == SEED_SHARE else 1]
    return int.from_bytes(open_once(key, sealed, share_associated_data(server.round_id, owner, holder, kind)), "big")


def to_masked_inputs(server, clients, vectors):
    setup = server.setup()
    keys = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in keys.items()])
    inputs = {i: clients[i].mask_input(m, vectors[i]) for i, m in relays.items()}
    return keys, inputs


# ----------------------------------------------------------------------------- colluders seated with a victim


def colluders_open(server, clients, keys, inputs, victim, colluders):
    """What the colluders' shares of ``victim`` give the server: its update, or None when they are too few."""
    t = server.graph.threshold
    seed_shares = {c: opened_share(server, victim, c, SEED_SHARE, clients[c].opener(victim, SEED_SHARE))
                   for c in colluders}
    key_shares = {c: opened_share(server, victim, c, KEY_SHARE, clients[c].opener(victim, KEY_SHARE))
                  for c in colluders}
    if len(seed_shares) < t:
        return None
    seed = interpolate(seed_shares).to_bytes(32, "big")
    mask_key = private_key_from_bytes(interpolate(key_shares).to_bytes(32, "big"))
    assert commitment(seed, 1, victim) == server._ads[victim].self_mask_commitment
    y = inputs[victim].masked.copy()
    add_signed(y, self_mask(seed, 1, victim, D), -1)
    broadcast = keys[victim]
    for j, mask_public in zip(broadcast.neighbour_ids, broadcast.mask_public_keys):
        add_signed(y, pair_mask(agree(mask_key, mask_public), 1, victim, j, D), -pair_sign(victim, j))
    return decode(y, server.config)


def test_two_colluders_open_a_victim_when_colluders_are_planned_from_the_round():
    """The review's attack, against the old rule: a roster of 10, a round of {victim, C1, C2}; planning
    colluders from the round (⌊0.2 × 3⌋ = 0) gives t = 2, and the two colluders' shares rebuild it."""
    members, victim, colluders = [0, 1, 2], 0, {1, 2}
    config = SecAggConfig(vector_length=D, max_clients=3, colluders=0)
    policy = SecAggPolicy(colluding_fraction=0.0, max_clip=config.clip, max_weight=config.max_weight)
    server, clients = round_parties(members, 10, config, policy, seed=1)
    vectors = {i: np.random.default_rng(i).uniform(-0.5, 0.5, D) for i in members}
    keys, inputs = to_masked_inputs(server, clients, vectors)
    rebuilt = colluders_open(server, clients, keys, inputs, victim, colluders)
    assert rebuilt is not None and np.abs(rebuilt - vectors[victim]).max() < 1e-6


@pytest.mark.parametrize("roster_size, colluders, min_clients", [(10, 2, 3), (30, 6, 10), (100, 20, 16)])
def test_colluders_planned_from_the_roster_never_open_a_victim(roster_size, colluders, min_clients):
    """The same attack at the review's three sizes, the victim raising ``min-clients`` in the last two: the
    server packs the victim with every colluder (and honest shops up to the round size), proposing the
    colluders honestly or as none. The victim refuses the round, or takes part with a threshold the
    colluders' shares do not reach."""
    gamma = colluders / roster_size
    n = max(min_clients, colluders + 1)
    members, victim, colluding = list(range(n)), 0, set(range(1, colluders + 1))
    policy = SecAggPolicy(min_clients=min_clients, colluding_fraction=gamma, max_clip=1.0, max_weight=1)
    outcomes = []
    for proposed in (0, planned_colluders(roster_size, gamma)):
        config = SecAggConfig(vector_length=D, max_clients=n, colluders=proposed, min_clients=min_clients)
        server, clients = round_parties(members, roster_size, config, policy, seed=2)
        try:
            clients[victim].advertise_keys(server.setup())
        except SecAggProtocolError as refusal:
            assert clients[victim].state is ClientState.FAILED
            outcomes.append(str(refusal))
            continue
        server, clients = round_parties(members, roster_size, config, policy, seed=2)
        vectors = {i: np.random.default_rng(i).uniform(-0.5, 0.5, D) for i in members}
        keys, inputs = to_masked_inputs(server, clients, vectors)
        k, t = server.graph.degree, server.graph.threshold
        assert colluders < t and 2 * (t - colluders) > k - colluders  # neither alone nor by splitting the rest
        assert colluders_open(server, clients, keys, inputs, victim, colluding) is None
        outcomes.append(f"took part with t={t} of k={k}")
    assert "colluders=0 is below" in outcomes[0]
    if roster_size == 30:  # ten shops with six colluders: t = 8 of 9 neighbours
        assert outcomes[1] == "took part with t=8 of k=9"
    else:  # a round of 3 with 2 colluders, or of 16 with 20: no threshold withstands them
        assert "cannot withstand" in outcomes[1]


@pytest.mark.parametrize("roster_size", [10, 30, 100])
def test_no_round_size_lets_the_planned_colluders_reach_the_threshold(roster_size):
    """Whatever round size n the server picks, a round the shop accepts has t > c and 2(t - c) > k - c, where c
    is every colluder in a complete graph (the server seats them) and the tail bound in a sparse one."""
    policy = SecAggPolicy(max_clip=1.0, max_weight=1)
    planned = policy.colluders(roster_size)
    accepted = 0
    for n in range(3, roster_size + 1):
        config = SecAggConfig(vector_length=D, max_clients=n, colluders=planned)
        try:
            policy.check_members(n, config)
            graph = neighbour_graph(range(n), bytes(32), None, planned, config.dropout_fraction)
            policy.check_graph(graph, roster_size)
        except (SecAggProtocolError, ValueError):
            continue
        k, t = graph.degree, graph.threshold
        c = min(planned, k) if k == n - 1 else corrupt_neighbours(n, k, planned)
        assert c < t and 2 * (t - c) > k - c, (n, k, t, c)
        accepted += 1
    assert accepted > 0


# ----------------------------------------------------------------------------- one shop excludes another


def test_a_copied_roster_key_under_a_junk_signature_excludes_only_its_sender():
    """Shop 4 advertises shop 0's public roster key with a junk signature; the clash check counts verified
    advertisements only, so shop 4 is excluded and shop 0 takes part."""
    members = list(range(5))
    config = SecAggConfig(vector_length=D, max_clients=5)
    server, clients = round_parties(members, 5, config, SecAggPolicy(max_clip=1.0, max_weight=1), seed=3)
    setup = server.setup()
    ads = [c.advertise_keys(setup) for c in clients.values()]
    ads[4] = dataclasses.replace(ads[4], identity_key=ads[0].identity_key, signature=bytes(64))
    broadcasts = server.collect_keys(ads)
    assert set(server.excluded) == {4} and "signature" in server.excluded[4]
    assert 0 in broadcasts and 4 not in broadcasts
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in broadcasts.items()])
    checks = server.collect_masked_inputs([clients[i].mask_input(m, np.full(D, 0.1)) for i, m in relays.items()])
    requests = server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
    result = server.collect_unmask_responses([clients[i].unmask(m) for i, m in requests.items()])
    assert result.contributors == (0, 1, 2, 3) and np.allclose(result.mean, 0.1, atol=1e-6)


# ----------------------------------------------------------------------------- one shop aborts a round


@pytest.mark.parametrize("liar", range(5))
def test_a_liar_among_the_lowest_ids_of_sixteen_cannot_abort_the_round(liar):
    """The liar reveals a wrong key for every share it holds; each is caught on its own, against the
    ciphertext the server relayed, and the round ends with the right sum (the liar's own input in it)."""
    n = 16
    config = SecAggConfig(vector_length=D, max_clients=n)

    def intercept(message):
        if isinstance(message, UnmaskResponse) and message.client_id == liar:
            return dataclasses.replace(message, self_mask_openers=tuple(bytes(32) for _ in message.self_mask_openers))
        return message

    trace = run_round([np.full(D, 0.3)] * n, None, config, seed=4, intercept=intercept)
    assert list(trace.excluded) == [liar] and "does not open" in trace.excluded[liar]
    assert trace.result.contributors == tuple(range(n)) and np.allclose(trace.result.mean, 0.3, atol=1e-6)


@pytest.mark.parametrize("weight", [4744, 3, 0, 2**32 - 4])
def test_an_out_of_range_weight_excludes_only_its_sender(weight):
    """Weights are public buckets, each checked on its own: the review's 4,744 (with max_weight 1,000), a
    weight that is not a bucket, zero, and one that would wrap the total are each refused alone."""
    n = 6
    config = SecAggConfig(vector_length=D, max_clients=n, max_weight=1000)

    def intercept(message):
        if type(message).__name__ == "MaskedInput" and message.client_id == 2:
            return dataclasses.replace(message, weight=weight)
        return message

    trace = run_round([np.full(D, 0.2)] * n, [4] * n, config, seed=5, intercept=intercept)
    assert list(trace.excluded) == [2] and "weight" in trace.excluded[2]
    assert 2 not in trace.result.contributors and trace.result.total_weight == 4 * (n - 1)
    assert np.allclose(trace.result.mean, 0.2, atol=1e-6)


def test_a_shop_that_deals_garbage_is_named(monkeypatch):
    """A dealer whose shares are authentic (they open) but do not rebuild the secret it committed to makes
    its own round abort; the server shows it and names it, so the platform leaves it out from then on."""
    n = 6
    config = SecAggConfig(vector_length=D, max_clients=n)
    real_split = client_module.split

    def garbage_for_dealer_3(secret, receivers, threshold, randomness):
        shares = real_split(secret, receivers, threshold, randomness)
        if 3 not in receivers:  # the dealer is the one client that is not among its own receivers
            shares = {r: (s + 1) % (2**264 - 275) for r, s in shares.items()}
        return shares

    monkeypatch.setattr(client_module, "split", garbage_for_dealer_3)
    with pytest.raises(SecAggAbort, match="client 3") as caught:
        run_round([np.zeros(D)] * n, None, config, seed=6)
    assert caught.value.culprits == (3,)


# ----------------------------------------------------------------------------- one shop steers the mean


def crafted_round(n, d, norm_bound, attack, seed=7):
    """A round of ``n`` shops whose shop 0 encodes ``attack(honest_sum, config)`` (any uint32 vector) in place
    of its update; returns the released mean and the mean had shop 0 sent zeros."""
    config = SecAggConfig(vector_length=d, max_clients=n, clip=0.5, norm_bound=norm_bound)
    rng = np.random.default_rng(seed)
    honest = [rng.normal(0, 1, d) for _ in range(n)]
    honest = [x * min(1.0, 0.8 / np.linalg.norm(x)) for x in honest]  # honest: inside a norm bound of 1
    honest[0] = np.zeros(d)
    reference = run_round(honest, None, config, seed=seed).result.mean
    encoded = attack(np.sum(honest[1:], axis=0), config)
    real_quantize = client_module.quantize

    def attacker_quantize(update, weight, config_, randomness):
        if np.array_equal(update, honest[0]) and update.size == d and not update.any():
            return encoded.astype(np.uint32)
        return real_quantize(update, weight, config_, randomness)

    client_module.quantize = attacker_quantize
    try:
        result = run_round(honest, None, config, seed=seed).result
    finally:
        client_module.quantize = real_quantize
    return result, reference, config


def huge(direction):
    def attack(honest_sum, config):
        return (np.sign(direction) * 2.0**30).astype(np.int64)
    return attack


def target(vector):
    def attack(honest_sum, config):  # the strongest attacker knows the others' sum: it aims the mean at ``vector``
        return np.round((vector * config.max_clients - honest_sum) * config.scale).astype(np.int64)
    return attack


@pytest.mark.parametrize("n", [5, 20])
def test_one_shop_moves_the_mean_by_at_most_twice_the_norm_bound(n):
    """The review's attack set the mean to a vector of its choice in the clip box; now the sum is projected
    onto the box and the ball of radius Σw·N, so no input moves the mean further than 2N in L2 (2·clip per
    element), for any n; an honest shop moves it by at most 2N/n."""
    d, norm = 256, 1.0
    rng = np.random.default_rng(n)
    far = np.full(d, 0.5) * rng.choice([-1, 1], d)  # a corner of the clip box: L2 = 8, far outside the ball
    shifts = []
    for attack in (huge(far), huge(-far), target(far), target(np.full(d, 0.5))):
        result, reference, config = crafted_round(n, d, norm, attack)
        assert result.projected  # the crafted sum lay outside what honest shops can give
        shift = result.mean - reference
        assert np.linalg.norm(shift) <= 2 * norm * (1 + 1e-6) and np.abs(shift).max() <= 2 * config.clip + 1e-6
        shifts.append(np.linalg.norm(shift))
    assert max(shifts) > norm  # the bound is not loose: the attacker does get near it
    # what the same attack achieved without the norm bound: the clip box only, L2 up to 2·0.5·√256 = 16
    result, reference, _ = crafted_round(n, d, None, target(far))
    assert np.linalg.norm(result.mean - reference) > 4 * norm


def test_an_honest_round_is_never_projected():
    n, d = 8, 128
    config = SecAggConfig(vector_length=d, max_clients=n, clip=0.5, max_weight=8, norm_bound=1.0)
    rng = np.random.default_rng(8)
    vectors = [rng.normal(0, 10, d) for _ in range(n)]  # every one clipped by its own shop first
    trace = run_round(vectors, [2 ** int(e) for e in rng.integers(0, 4, n)], config, seed=8)
    assert not trace.result.projected


def test_one_shop_cannot_dominate_the_statistics():
    """The review's statistics attack: 4.2M on the least popular category against an honest total of 400.
    Each shop's release is bounded by what a shop of ``max-shop-customers`` can give (wire.release_bound),
    and the sum is projected onto n times it."""
    from fedinterest.common import wire

    n, categories = 5, 50
    bound = wire.release_bound(wire.DEFAULT_MAX_SHOP_CUSTOMERS, categories)
    assert bound < 2**20 / 40  # the old per-element clip was 2**20, with no L2 bound at all
    config = SecAggConfig(vector_length=categories, max_clients=n, clip=bound, max_weight=1, norm_bound=bound)
    rng = np.random.default_rng(9)
    honest = [rng.multinomial(100, np.linspace(1, 0.1, categories) / np.linspace(1, 0.1, categories).sum())
              .astype(float) for _ in range(n)]
    honest[0] = np.zeros(categories)

    def push_least_popular(honest_sum, config_):
        attack = np.zeros(categories)
        attack[-1] = 4.2e6
        return np.round(attack * config_.scale).astype(np.int64)

    real_quantize = client_module.quantize

    def attacker_quantize(update, weight, config_, randomness):
        if not np.any(update):
            return push_least_popular(None, config_).astype(np.uint32)
        return real_quantize(update, weight, config_, randomness)

    client_module.quantize = attacker_quantize
    try:
        result = run_round(honest, None, config, seed=9).result
    finally:
        client_module.quantize = real_quantize
    honest_sum = np.sum(honest, axis=0)  # (4.2M does not even fit the fixed point: it wraps, and is bounded)
    assert np.linalg.norm(result.weighted_sum - honest_sum) <= 2 * n * bound
    assert result.weighted_sum[-1] < 4.2e6 / 10


# ----------------------------------------------------------------------------- different adapters to different shops


def test_neighbours_shown_different_adapters_refuse_to_unmask():
    """The server sends shops 3 and 4 another adapter than shops 0-2: every survivor vouches for the adapter it
    received, so nobody finds t neighbours vouching for its own, and no share is revealed."""
    n = 5
    config = SecAggConfig(vector_length=D, max_clients=n)
    server, clients = round_parties(list(range(n)), n, config, SecAggPolicy(max_clip=1.0, max_weight=1), seed=10)
    subjects = {i: (b"A" if i < 3 else b"B") * 32 for i in range(n)}
    setup = server.setup()
    keys = server.collect_keys([c.advertise_keys(setup, subjects[i]) for i, c in clients.items()])
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in keys.items()])
    checks = server.collect_masked_inputs([clients[i].mask_input(m, np.zeros(D)) for i, m in relays.items()])
    requests = server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
    for i, request in requests.items():
        with pytest.raises(SecAggIntegrityError, match="fewer than t"):
            clients[i].unmask(request)
        assert clients[i].state is ClientState.FAILED
    # the same round with one adapter for all unmasks
    server, clients = round_parties(list(range(n)), n, config, SecAggPolicy(max_clip=1.0, max_weight=1), seed=10)
    setup = server.setup()
    keys = server.collect_keys([c.advertise_keys(setup, b"A" * 32) for c in clients.values()])
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in keys.items()])
    checks = server.collect_masked_inputs([clients[i].mask_input(m, np.zeros(D)) for i, m in relays.items()])
    requests = server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
    assert server.collect_unmask_responses([clients[i].unmask(m) for i, m in requests.items()]).total_weight == n
