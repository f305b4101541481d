"""Secure aggregation core (common.secagg): correctness, privacy of what the server sees,
dropouts, the one-share-kind rule, integrity, quantization, graph and Shamir."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import stats

from fedinterest.common.secagg import (
    WIRE_MESSAGES, ClientState, KeyAdvertisement, KeyBroadcast, MaskedInput, SecAggAbort, SecAggClient,
    SecAggConfig, SecAggConfigError, SecAggIntegrityError, SecAggProtocolError, SeededRandomness,
    ServerState, ShareDistribution, ShareKindViolation, ShareRelay, Stage, UnmaskResponse, message_from_record,
    neighbour_graph, quantize, record_nbytes, run_round,
)
from fedinterest.common.secagg import shamir
from fedinterest.common.secagg.config import element_bound, fits
from fedinterest.common.secagg.graph import default_degree
from fedinterest.common.secagg.masks import KEY_SHARE, pair_mask, self_mask

# ----------------------------------------------------------------------------- helpers


def clipped_weighted_mean(vectors, weights, clip):
    clipped = [np.clip(np.asarray(x, dtype=np.float64), -clip, clip) for x in vectors]
    return sum(w * x for w, x in zip(weights, clipped)) / sum(weights)


def error_bound(config: SecAggConfig, weights) -> float:
    """The documented bound: |mean_hat - mean| < m+ / (2**f * W_tot) <= 2**-f, per element."""
    positive = sum(1 for w in weights if w > 0)
    return positive / (config.scale * sum(weights))


def make_updates(n, d, clip, rng):
    # a quarter of the elements lie outside [-clip, clip] so clipping is exercised
    return [rng.uniform(-1.3 * clip, 1.3 * clip, d).astype(np.float32) for _ in range(n)]


def assert_round_matches(trace, vectors, weights, config, contributors):
    sub_x = [vectors[i] for i in contributors]
    sub_w = [weights[i] for i in contributors]
    expected = clipped_weighted_mean(sub_x, sub_w, config.clip)
    result = trace.result
    assert result.contributors == tuple(sorted(contributors))
    assert result.total_weight == sum(sub_w)
    err = np.abs(result.mean - expected).max()
    assert err < error_bound(config, sub_w) + 1e-12, (err, error_bound(config, sub_w))


from tests.secagg_parties import manual_round, run_to_unmask


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("n", [3, 10, 50])
def test_weighted_mean_within_stated_bound(n):
    rng = np.random.default_rng(n)
    config = SecAggConfig(vector_length=2000, max_clients=n, clip=0.5, max_weight=256)
    vectors = make_updates(n, 2000, 0.5, rng)
    weights = [2 ** int(e) for e in rng.integers(0, 9, n)]  # public weights are power-of-two buckets
    weights[0] = 256  # the maximum weight is allowed
    if n >= 10:
        weights[1] = 1  # the least weight a survivor may send
    trace = run_round(vectors, weights, config, seed=n)
    assert_round_matches(trace, vectors, weights, config, range(n))
    # the bound is at most 2**-frac_bits and is tight enough to mean something
    assert error_bound(config, weights) <= 2.0**-config.frac_bits


def test_unweighted_mean_and_large_client_ids():
    rng = np.random.default_rng(1)
    ids = [2**64 - 1, 17, 2**40 + 3, 5, 0, 999]
    config = SecAggConfig(vector_length=300, max_clients=8, clip=1.0)
    vectors = make_updates(len(ids), 300, 1.0, rng)
    trace = run_round(vectors, None, config, client_ids=ids, seed=2)
    assert trace.result.total_weight == len(ids)
    expected = clipped_weighted_mean(vectors, [1] * len(ids), 1.0)
    assert np.abs(trace.result.mean - expected).max() < error_bound(config, [1] * len(ids)) + 1e-12


def test_extreme_inputs_never_overflow():
    n, weight = 7, 1024
    config = SecAggConfig(vector_length=4, max_clients=n, clip=2.0, max_weight=weight)
    assert not fits(n, 2.0, weight, config.frac_bits + 1)  # automatic precision is the largest that fits
    for value in (2.0, -2.0, 1e9, -1e9):  # everyone at the clipping bound with the maximum weight
        trace = run_round([np.full(4, value)] * n, [weight] * n, config, seed=3)
        assert np.array_equal(trace.result.mean, np.full(4, np.clip(value, -2.0, 2.0)))
        assert trace.result.total_weight == n * weight


def test_deterministic_with_injected_randomness():
    rng = np.random.default_rng(4)
    config = SecAggConfig(vector_length=500, max_clients=6)
    vectors = make_updates(6, 500, 1.0, rng)
    captured: dict[str, list] = {"a": [], "b": [], "c": []}

    def capture(key):
        def intercept(message):
            if isinstance(message, MaskedInput):
                captured[key].append(message.masked.copy())
            return message
        return intercept

    first = run_round(vectors, None, config, seed=9, intercept=capture("a"))
    second = run_round(vectors, None, config, seed=9, intercept=capture("b"))
    run_round(vectors, None, config, seed=10, intercept=capture("c"))
    assert np.array_equal(first.result.weighted_sum, second.result.weighted_sum)
    assert all(np.array_equal(x, y) for x, y in zip(captured["a"], captured["b"]))
    assert not any(np.array_equal(x, y) for x, y in zip(captured["a"], captured["c"]))


# ----------------------------------------------------------------------------- what the server sees


def test_masked_vector_is_uniform_and_uncorrelated_with_the_update():
    d = 1 << 16
    config = SecAggConfig(vector_length=d, max_clients=10, clip=1.0, max_weight=16)
    # a strongly structured, non-negative update: unmasked, its encoding is far from uniform
    update = np.linspace(0.0, 1.0, d)
    vectors = [update] + [np.zeros(d)] * 9
    seen = {}

    def intercept(message):
        if isinstance(message, MaskedInput) and message.client_id == 0:
            seen["y"] = message.masked.copy()
        return message

    run_round(vectors, [16] + [1] * 9, config, seed=5, intercept=intercept)
    y = seen["y"]
    for buckets in (y >> np.uint32(24), y & np.uint32(0xFF)):  # high and low 8 bits
        counts = np.bincount(buckets.astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-3
    r = np.corrcoef(y.astype(np.float64), update)[0, 1]
    assert abs(r) < 5 / np.sqrt(d)
    # negative control: the same tests reject the unmasked encoding
    plain = quantize(update, 16, config, SeededRandomness(0))
    counts = np.bincount((plain >> np.uint32(24)).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue < 1e-12
    assert np.corrcoef(plain.astype(np.float64), update)[0, 1] > 0.99


def test_wire_declaration_is_complete_and_carries_no_secrets():
    """Every record matches its declared keys and types; no client secret is ever in a record."""
    n, d = 8, 64
    config = SecAggConfig(vector_length=d, max_clients=n)
    server, clients = manual_round(n, config, seed=6)
    records = []

    def send(message):
        record = message.to_record()
        assert set(record) == {"message", *type(message).KEYS}
        for value in record.values():
            assert isinstance(value, (bytes, int, float, list, np.ndarray))
            assert not isinstance(value, list) or all(type(v) is int for v in value)
            assert not isinstance(value, np.ndarray) or value.dtype == np.uint32
        records.append((type(message), record))
        decoded = message_from_record(record)
        assert type(decoded) is type(message)
        return decoded

    setup = send(server.setup())
    keys = server.collect_keys([send(c.advertise_keys(setup)) for c in clients.values()])
    relays = server.collect_shares([send(clients[i].share_keys(send(m))) for i, m in keys.items()])
    checks = server.collect_masked_inputs(
        [send(clients[i].mask_input(send(m), np.ones(d))) for i, m in relays.items()]
    )
    requests = server.collect_signatures([send(clients[i].sign_survivors(send(m))) for i, m in checks.items()])
    server.collect_unmask_responses([send(clients[i].unmask(send(m))) for i, m in requests.items()])
    assert {cls for cls, _ in records} == set(WIRE_MESSAGES)
    secrets = []
    for c in clients.values():
        secrets += [c._self_mask_seed, c._mask_private_raw, c._share_private.private_bytes_raw(),
                    c.identity._private.private_bytes_raw()]
    for _, record in records:
        for value in record.values():
            if isinstance(value, bytes):
                assert not any(s in value for s in secrets)
    # only the masked input carries a vector, and it has exactly 4 bytes per element (the weight is public)
    arrays = [(cls, v) for cls, r in records for v in r.values() if isinstance(v, np.ndarray)]
    assert {cls for cls, _ in arrays} == {MaskedInput}
    assert all(v.nbytes == 4 * d for _, v in arrays)


def test_records_reject_malformed_input():
    ad = KeyAdvertisement(1, 2, b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32, b"e" * 64, 1, (b"f" * 32, b"g" * 32))
    record = ad.to_record()
    assert KeyAdvertisement.from_record(record) == ad
    assert record_nbytes(record) > 3 * 32
    for path in (b"f" * 31, b"f" * 32 * 7, [b"f" * 32]):  # not whole hashes, deeper than a batch can be, not bytes
        with pytest.raises(SecAggProtocolError, match="batch_path"):
            KeyAdvertisement.from_record({**record, "batch_path": path})
    with pytest.raises(SecAggProtocolError, match="keys"):
        KeyAdvertisement.from_record({**record, "extra": 1})
    with pytest.raises(SecAggProtocolError, match="mask_public_key"):
        KeyAdvertisement.from_record({**record, "mask_public_key": b"short"})
    with pytest.raises(SecAggProtocolError, match="code"):
        ShareRelay.from_record(record)
    with pytest.raises(SecAggProtocolError, match="uint32"):
        MaskedInput.from_record({"message": 31, "round_id": 1, "client_id": 2, "weight": 1,
                                 "masked": np.zeros(3, np.int64)})


# ----------------------------------------------------------------------------- dropouts

DROP_CASES = {
    Stage.ADVERTISE_KEYS: {2, 7},  # never started
    Stage.SHARE_KEYS: {2, 7},  # advertised keys, then gone
    Stage.MASKED_INPUT: {2, 7},  # shared, then gone: their pair masks must be removed
    Stage.CONSISTENCY: {2, 7},  # sent the masked input, then gone: still in the sum
    Stage.UNMASK: {2, 7},  # signed the survivor set, then gone: still in the sum
}


@pytest.mark.parametrize("stage", list(DROP_CASES))
def test_dropouts_after_each_stage_are_recovered(stage):
    n, d = 10, 400
    rng = np.random.default_rng(int(stage))
    config = SecAggConfig(vector_length=d, max_clients=n, max_weight=32)
    vectors, weights = make_updates(n, d, 1.0, rng), [2 ** int(e) for e in rng.integers(0, 6, n)]
    dropped = DROP_CASES[stage]
    trace = run_round(vectors, weights, config, seed=int(stage), dropouts={stage: dropped})
    contributors = range(n) if stage >= Stage.CONSISTENCY else [i for i in range(n) if i not in dropped]
    assert_round_matches(trace, vectors, weights, config, contributors)


def test_dropouts_at_every_stage_in_one_round():
    n, d = 20, 300
    rng = np.random.default_rng(11)
    config = SecAggConfig(vector_length=d, max_clients=n, max_weight=8)
    vectors, weights = make_updates(n, d, 1.0, rng), [2 ** int(e) for e in rng.integers(0, 4, n)]
    dropouts = {Stage.ADVERTISE_KEYS: {0}, Stage.SHARE_KEYS: {5}, Stage.MASKED_INPUT: {9, 13}, Stage.UNMASK: {17}}
    shares_seen = {"self": set(), "key": set()}

    def intercept(message):
        if isinstance(message, UnmaskResponse):
            shares_seen["self"] |= set(message.self_mask_owners)
            shares_seen["key"] |= set(message.mask_key_owners)
        return message

    trace = run_round(vectors, weights, config, seed=12, dropouts=dropouts, intercept=intercept)
    assert_round_matches(trace, vectors, weights, config, [i for i in range(n) if i not in {0, 5, 9, 13}])
    assert shares_seen["key"] == {9, 13} and not shares_seen["self"] & shares_seen["key"]


@pytest.mark.parametrize(
    "dropouts, where",
    [
        ({Stage.ADVERTISE_KEYS: set(range(8))}, "min_clients"),  # 2 clients left
        ({Stage.MASKED_INPUT: {0, 1, 2, 3}}, "threshold"),  # every survivor keeps 5 < t = 6 live neighbours
        ({Stage.UNMASK: {0, 1, 2, 3, 4}}, "arrived"),  # 5 responders cannot give anyone 6 shares
    ],
)
def test_too_many_dropouts_abort_cleanly(dropouts, where):
    n = 10
    config = SecAggConfig(vector_length=50, max_clients=n)
    graph = neighbour_graph(range(n), b"s" * 32, None, config.colluders, config.dropout_fraction)
    assert (graph.degree, graph.threshold) == (9, 6)  # everyone; ⌊(9 + 2 colluders)/2⌋ + 1: ⌈20% of 10⌉
    with pytest.raises(SecAggAbort, match=where):
        run_round([np.zeros(50)] * n, None, config, seed=13, dropouts=dropouts)


def test_abort_leaves_no_partial_result():
    n, d = 10, 50
    config = SecAggConfig(vector_length=d, max_clients=n)
    server, clients = manual_round(n, config, seed=14)
    requests = run_to_unmask(server, clients, [np.ones(d)] * n)
    responses = [clients[i].unmask(requests[i]) for i in range(5)]
    with pytest.raises(SecAggAbort):
        server.collect_unmask_responses(responses)
    assert server.state is ServerState.ABORTED and server._sum is None
    assert not server._self_shares and not server._key_shares
    with pytest.raises(SecAggProtocolError):
        server.collect_unmask_responses(responses)


# ----------------------------------------------------------------------------- one share kind per client


def test_client_refuses_to_reveal_both_share_kinds():
    n, d = 6, 20
    config = SecAggConfig(vector_length=d, max_clients=n)
    server, clients = manual_round(n, config, seed=15)
    requests = run_to_unmask(server, clients, [np.zeros(d)] * n)
    honest = requests[0]
    malicious = dataclasses.replace(honest, dropped=(3,))  # 3 is also listed among the survivors
    with pytest.raises(ShareKindViolation, match="both share kinds"):
        clients[0].unmask(malicious)
    assert clients[0].state is ClientState.FAILED
    with pytest.raises(SecAggProtocolError):  # a refused client stays refused
        clients[0].unmask(honest)
    # a second unmask request, even a different one, is never answered
    clients[1].unmask(requests[1])
    with pytest.raises(SecAggProtocolError):
        clients[1].unmask(dataclasses.replace(requests[1], survivors=(0, 1, 2, 4, 5), dropped=(3,)))


def test_server_never_holds_both_share_kinds():
    n, d = 6, 20
    config = SecAggConfig(vector_length=d, max_clients=n)
    server, clients = manual_round(n, config, seed=16)
    requests = run_to_unmask(server, clients, [np.zeros(d)] * n)
    responses = [clients[i].unmask(requests[i]) for i in range(n)]
    # client 1 (wrongly) also hands over the key of its share of survivor 3's mask key
    opener = clients[1].opener(3, KEY_SHARE) if 3 in clients[1]._held else bytes(32)
    bad = dataclasses.replace(responses[1], mask_key_owners=(3,), mask_key_openers=(opener,))
    held = []
    original = server._hold_response
    server._hold_response = lambda r: (original(r), held.append(dict(server._key_shares)))
    result = server.collect_unmask_responses([responses[0], bad, *responses[2:]])
    assert all(not shares for shares in held)  # no key share of anyone was ever stored
    assert "both" in server.excluded[1] or "self share only" in server.excluded[1] or "calls for" in server.excluded[1]
    assert result.total_weight == n and np.abs(result.mean).max() < 1e-6  # the other five suffice


# ----------------------------------------------------------------------------- integrity


def _flip(data: bytes, position: int = -1) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


def test_a_share_that_does_not_open_is_not_held_and_the_round_goes_on():
    """A tampered ciphertext (one shop, or the network) costs its receiver that one share, not the round."""
    unopened = {}

    def intercept(message):
        if isinstance(message, ShareDistribution) and message.client_id == 1:
            tampered = (_flip(message.seed_shares[0], 10),) + message.seed_shares[1:]
            return dataclasses.replace(message, seed_shares=tampered)
        if isinstance(message, UnmaskResponse):
            unopened[message.client_id] = message.unopened
        return message

    config = SecAggConfig(vector_length=10, max_clients=5)
    trace = run_round([np.full(10, 0.5)] * 5, None, config, seed=17, intercept=intercept)
    assert np.abs(trace.result.mean - 0.5).max() < 1e-6 and not trace.excluded
    receiver = 0  # client 1's first neighbour
    assert unopened[receiver] == (1,) and all(not u for c, u in unopened.items() if c != receiver)


def test_readdressed_share_ciphertext_opens_for_nobody():
    def intercept(message):  # swap which sender each of the first two ciphertexts claims to be from
        if isinstance(message, ShareRelay) and message.client_id == 0:
            c = message.seed_shares
            return dataclasses.replace(message, seed_shares=(c[1], c[0]) + c[2:])
        if isinstance(message, UnmaskResponse) and message.client_id == 0:
            assert set(message.unopened) == {1, 2}
        return message

    config = SecAggConfig(vector_length=10, max_clients=5)
    trace = run_round([np.full(10, 0.5)] * 5, None, config, seed=18, intercept=intercept)
    assert np.abs(trace.result.mean - 0.5).max() < 1e-6


def test_share_replayed_from_another_round_opens_for_nobody():
    """Same injected randomness in rounds 1 and 2, so even the keys are equal: only the round binding
    in key derivation and associated data makes the replayed shares useless."""
    config = SecAggConfig(vector_length=10, max_clients=5)
    captured = {}

    def record(round_id):
        def intercept(message):
            captured.setdefault(round_id, {})[(type(message), getattr(message, "client_id", None))] = message
            if round_id == 2 and isinstance(message, ShareDistribution):
                old = captured[1][(ShareDistribution, message.client_id)]
                return dataclasses.replace(message, seed_shares=old.seed_shares, key_shares=old.key_shares)
            return message
        return intercept

    run_round([np.zeros(10)] * 5, None, config, round_id=1, seed=19, intercept=record(1))
    with pytest.raises(SecAggAbort, match="could not open"):
        run_round([np.zeros(10)] * 5, None, config, round_id=2, seed=19, intercept=record(2))
    assert (captured[1][(KeyAdvertisement, 0)].share_public_key == captured[2][(KeyAdvertisement, 0)].share_public_key)
    assert all(set(captured[2][(UnmaskResponse, i)].unopened) == {0, 1, 2, 3, 4} - {i} for i in range(5))
    # a whole message from the old round is refused by the server, and by a client
    server, clients = manual_round(5, config, seed=19, round_id=2)
    setup = server.setup()
    with pytest.raises(SecAggAbort, match="min_clients"):
        server.collect_keys([captured[1][(KeyAdvertisement, i)] for i in range(5)])
    assert all("round 1" in server.excluded[i] for i in range(5))
    clients[0].advertise_keys(setup)
    with pytest.raises(SecAggProtocolError, match="round 1"):
        clients[0].share_keys(captured[1][(KeyBroadcast, 0)])


@pytest.mark.parametrize("n, kind", [(3, "self"), (10, "self"), (10, "key")])
def test_a_lying_holder_is_caught_alone(n, kind):
    """A holder that reveals a wrong key is caught by the server against the ciphertext it relayed, and
    excluded by itself; with more than t holders the round ends, with exactly t it aborts naming nobody."""
    d = 20
    config = SecAggConfig(vector_length=d, max_clients=n)
    dropouts = {Stage.MASKED_INPUT: {4}} if kind == "key" else {}

    def intercept(message):
        if isinstance(message, UnmaskResponse) and message.client_id == 0:
            if kind == "self":
                return dataclasses.replace(message, self_mask_openers=(_flip(message.self_mask_openers[0]),)
                                           + message.self_mask_openers[1:])
            return dataclasses.replace(message, mask_key_openers=(_flip(message.mask_key_openers[0]),))
        return message

    vectors = [np.full(d, 0.25)] * n
    if n == 3:  # complete graph, k = t = 2: the liar's share is one of exactly two
        with pytest.raises(SecAggAbort, match="arrived") as caught:
            run_round(vectors, None, config, seed=20, dropouts=dropouts, intercept=intercept)
        assert caught.value.culprits == ()  # the owner is not blamed for the holder's lie
        return
    trace = run_round(vectors, None, config, seed=20, dropouts=dropouts, intercept=intercept)
    assert np.abs(trace.result.mean - 0.25).max() < 1e-6  # the lie costs nothing
    assert list(trace.excluded) == [0] and "does not open" in trace.excluded[0]


def test_client_checks_server_parameters_and_graph():
    config = SecAggConfig(vector_length=10, max_clients=6)
    server, clients = manual_round(6, config, seed=21)
    setup = server.setup()
    lax = dataclasses.replace(setup, config=SecAggConfig(vector_length=10, max_clients=6, clip=5.0))
    with pytest.raises(SecAggProtocolError, match="clip"):
        clients[0].advertise_keys(lax)
    server, clients = manual_round(6, config, seed=21)
    setup = server.setup()
    keys = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    forged = dataclasses.replace(keys[1], **{name: getattr(keys[1], name)[:-1] for name in
                                             ("neighbour_ids", "share_public_keys", "mask_public_keys",
                                              "commitments", "identity_keys", "signatures")})
    with pytest.raises(SecAggProtocolError, match="graph"):
        clients[1].share_keys(forged)


# ----------------------------------------------------------------------------- configuration and quantization


def test_quantization_overflow_is_refused_with_a_clear_error():
    with pytest.raises(SecAggConfigError, match=r"frac_bits=20 overflows.*Use frac_bits <= 11"):
        SecAggConfig(vector_length=10, max_clients=1000, clip=1.0, max_weight=1000, frac_bits=20)
    with pytest.raises(SecAggConfigError, match="no fixed-point precision fits"):
        SecAggConfig(vector_length=10, max_clients=1000, clip=1e7, max_weight=1)
    with pytest.raises(SecAggConfigError, match="max_weight"):
        SecAggConfig(vector_length=10, max_clients=100_000, max_weight=100_000)
    config = SecAggConfig(vector_length=10, max_clients=1000, clip=1.0, max_weight=1000)
    assert config.frac_bits == 11 and 1000 * element_bound(1.0, 1000, 11) <= 2**31 - 1
    for field, value in [("vector_length", 0), ("degree", 3), ("min_clients", 1), ("clip", float("nan"))]:
        with pytest.raises(SecAggConfigError, match=field):
            SecAggConfig(**{"vector_length": 10, "max_clients": 10, field: value})


def test_weights_and_updates_are_validated():
    config = SecAggConfig(vector_length=3, max_clients=4, max_weight=10)
    rnd = SeededRandomness(0)
    with pytest.raises(ValueError, match="max_weight"):
        quantize(np.zeros(3), 11, config, rnd)
    with pytest.raises(ValueError, match="integer"):
        quantize(np.zeros(3), 2.5, config, rnd)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([0.0, np.nan, 0.0]), 1, config, rnd)
    with pytest.raises(ValueError, match="vector_length"):
        quantize(np.zeros(4), 1, config, rnd)


def test_stochastic_rounding_is_unbiased():
    config = SecAggConfig(vector_length=200_000, max_clients=3, frac_bits=2)
    x = np.full(200_000, 0.1)  # 0.4 levels: rounds to 0 or 1
    q = quantize(x, 1, config, SeededRandomness(1)).view(np.int32)
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() / config.scale - 0.1) < 5 * 0.5 / np.sqrt(200_000) / config.scale


# ----------------------------------------------------------------------------- graph and Shamir


def test_graph_is_k_regular_and_reproducible_from_the_seed():
    members = list(range(100, 200))
    graph = neighbour_graph(members, b"\x01" * 32)
    assert graph.degree == default_degree(100) == 14 and graph.threshold == 8
    for i in members:
        assert len(graph[i]) == 14 and i not in graph[i]
        assert all(i in graph[j] for j in graph[i])  # symmetric
    assert neighbour_graph(list(reversed(members)), b"\x01" * 32).neighbours == graph.neighbours
    assert neighbour_graph(members, b"\x02" * 32).neighbours != graph.neighbours
    small = neighbour_graph([1, 2, 3, 4, 5], b"\x01" * 32)  # 2*ceil(log2 5) = 6 >= 4: everyone
    assert small.degree == 4 and all(len(small[i]) == 4 for i in small.members)
    fixed = neighbour_graph(members, b"\x01" * 32, degree=6)
    assert all(len(fixed[i]) == 6 for i in members) and fixed.threshold == 4


def test_the_shamir_field_holds_every_32_byte_secret_in_33_bytes():
    import sympy

    assert sympy.isprime(shamir.PRIME) and 2**256 < shamir.PRIME < 2 ** (8 * shamir.SHARE_BYTES)
    assert shamir.SHARE_BYTES == 33


def test_shamir_reconstructs_with_t_shares_and_not_with_fewer():
    rnd = SeededRandomness(3)
    secret = rnd(32)
    holders = [3, 8, 12, 40, 41, 77, 2**64 - 1]
    t = 4
    shares = shamir.split(secret, holders, t, rnd)
    for subset in itertools.combinations(holders, t):
        assert shamir.reconstruct({h: shares[h] for h in subset}, t) == secret
    assert shamir.reconstruct(shares, t) == secret  # all 7, extras consistent
    fewer = {h: shares[h] for h in holders[: t - 1]}
    with pytest.raises(ValueError, match="need 4 shares"):
        shamir.reconstruct(fewer, t)
    assert shamir.interpolate(fewer) != int.from_bytes(secret, "big")  # t - 1 shares give a wrong value
    # and they are consistent with any other secret: perfect secrecy
    other = dict(fewer)
    other[-1] = int.from_bytes(b"\xff" * 32, "big")  # the point x = 0 as a "share" of holder -1
    assert shamir.interpolate(other) == int.from_bytes(b"\xff" * 32, "big")
    tampered = dict(shares)
    tampered[77] = (tampered[77] + 1) % shamir.PRIME
    with pytest.raises(SecAggIntegrityError, match="77"):
        shamir.reconstruct(tampered, t)


def test_masks_for_a_million_parameters_are_fast():
    import time

    start = time.perf_counter()
    y = np.zeros(1_000_001, np.uint32)
    np.add(y, self_mask(b"s" * 32, 1, 0, y.size), out=y)
    for j in range(14):
        np.subtract(y, pair_mask(bytes([j]) * 32, 1, 0, j + 1, y.size), out=y)
    assert time.perf_counter() - start < 5.0  # typically ~0.1 s on 2 cores


def test_client_state_survives_a_process_boundary_between_stages():
    """A client restored from ``to_state`` at every stage produces the same aggregate."""
    import pickle

    config = SecAggConfig(vector_length=20, max_clients=5, clip=1.0, max_weight=10)
    rng = np.random.default_rng(0)
    vectors = [rng.uniform(-1, 1, 20) for _ in range(5)]
    ids = list(range(5))
    server, clients = manual_round(5, config, seed=1, round_id=3)
    states = {i: c.to_state() for i, c in clients.items()}

    def stage(requests, act):
        replies = []
        for i, request in requests.items():
            c = clients[i]
            client = SecAggClient.from_state(pickle.loads(pickle.dumps(states[i])), c.identity, c.roster, c.policy,
                                             SeededRandomness(1, i, len(replies)))
            replies.append(act(client, i, request))
            states[i] = client.to_state()
        return replies

    setup = server.setup()
    keys = server.collect_keys(stage({i: setup for i in ids}, lambda c, i, m: c.advertise_keys(m)))
    relays = server.collect_shares(stage(keys, lambda c, i, m: c.share_keys(m)))
    checks = server.collect_masked_inputs(stage(relays, lambda c, i, m: c.mask_input(m, vectors[i], 2)))
    unmask = server.collect_signatures(stage(checks, lambda c, i, m: c.sign_survivors(m)))
    result = server.collect_unmask_responses(stage(unmask, lambda c, i, m: c.unmask(m)))
    assert result.total_weight == 10
    assert np.abs(result.mean - np.mean(vectors, axis=0)).max() < 1e-6


def test_degree_and_threshold_follow_bell_bounds():
    """``t`` outvotes every honest/corrupt split of a neighbourhood, and ``k`` grows like log n."""
    from fedinterest.common.secagg import planned_colluders
    from fedinterest.common.secagg.graph import corrupt_neighbours, secure_parameters

    for n in (8, 16, 100, 1000):
        colluders = planned_colluders(n)
        k, t = secure_parameters(n, colluders, 0.1)
        c = corrupt_neighbours(n, k, colluders)
        assert c >= min(k, colluders) * (k == n - 1)  # the complete graph plans for every colluder
        assert 2 * t > k + c and t <= k
    assert secure_parameters(8, 2, 0.1) == (7, 5) and secure_parameters(8, 0, 0.1) == (7, 4)
    degrees = [secure_parameters(n, planned_colluders(n), 0.1)[0] for n in (100, 1000, 3000)]
    assert degrees == sorted(degrees) and degrees[-1] < 2 * degrees[0]  # 30x the clients, < 2x the degree
