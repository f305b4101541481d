"""A malicious aggregator against the real SecAgg+ clients: one scripted attack per test.

The server here follows the protocol except where each test makes it cheat. Every test shows the
attack fails: the shop refuses (a logged, typed error, and its state is FAILED so nothing later is
answered), and what the attacker can rebuild is not the shop's update. The colluder test also runs
the same attack against a weaker threshold, where it does recover the update: the attack is real.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedinterest.common.secagg import (
    planned_colluders, ClientState, Identity, MaskedInput, Roster, SecAggClient, SecAggConfig, SecAggIntegrityError,
    SecAggPolicy, SecAggProtocolError, SecAggServer, SeededRandomness, ShareDistribution, ShareKindViolation,
)
from fedinterest.common.secagg.identity import advertisement_payload, consistency_tag, survivors_payload
from fedinterest.common.secagg.keybatch import batch_payload, leaf_hash
from fedinterest.common.secagg.messages import UnmaskRequest
from fedinterest.common.secagg.masks import KEY_SHARE, SEED_SHARE, add_signed, pair_mask, pair_sign, self_mask, share_associated_data
from fedinterest.common.secagg.primitives import agree, new_private_key, open_once, private_key_from_bytes, public_bytes
from fedinterest.common.secagg.quantize import decode
from fedinterest.common.secagg.shamir import reconstruct
from tests.secagg_parties import manual_round, policy_for, run_to_signatures, run_to_unmask

D = 32


def updates(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, D) for _ in range(n)]


def refuses(client: SecAggClient, call, error=SecAggIntegrityError, match: str | None = None) -> None:
    """``call`` raises ``error`` and leaves ``client`` FAILED: it answers nothing later in the round."""
    with pytest.raises(error, match=match):
        call()
    assert client.state is ClientState.FAILED


def to_share_stage(n, seed, config=None, ids=None):
    config = config or SecAggConfig(vector_length=D, max_clients=max(n, 3))
    server, clients = manual_round(n, config, seed, ids=ids)
    setup = server.setup()
    broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    return server, clients, broadcasts


# ----------------------------------------------------------------------------- key substitution


def test_key_substitution_is_refused_before_any_share_is_made():
    """The server puts its own keys between shop 0 and a neighbour, re-signed or not: shop 0 refuses."""
    server, clients, broadcasts = to_share_stage(5, seed=1)
    victim, message = clients[0], broadcasts[0]
    server_keys = [public_bytes(new_private_key(SeededRandomness(9, k))) for k in range(2)]

    def substituted(signer: Identity | None) -> object:
        shares, masks = list(message.share_public_keys), list(message.mask_public_keys)
        identities, signatures = list(message.identity_keys), list(message.signatures)
        shares[0], masks[0] = server_keys
        paths = list(message.batch_paths)
        if signer is not None:  # the server signs the substituted advertisement with its own identity
            identities[0], paths[0] = signer.public_key, ()  # a batch of this one round: the root is the leaf
            root = leaf_hash(advertisement_payload(0, 1, message.neighbour_ids[0], shares[0], masks[0],
                                                   message.commitments[0]))
            signatures[0] = signer.sign(batch_payload(0, message.neighbour_ids[0], 1, 0, root))
        return dataclasses.replace(message, share_public_keys=tuple(shares), mask_public_keys=tuple(masks),
                                   identity_keys=tuple(identities), signatures=tuple(signatures),
                                   batch_first_rounds=(1,) + message.batch_first_rounds[1:], batch_paths=tuple(paths))

    refuses(victim, lambda: victim.share_keys(substituted(None)), match="signature does not verify")
    _, clients, _ = to_share_stage(5, seed=1)
    refuses(clients[0], lambda: clients[0].share_keys(substituted(Identity.generate())), match="not on the roster")
    # with a roster key it does not hold, the server cannot sign at all; a digest it changes is caught too
    _, clients, _ = to_share_stage(5, seed=1)
    forged = dataclasses.replace(message, member_digests=(bytes(32),) + message.member_digests[1:])
    refuses(clients[0], lambda: clients[0].share_keys(forged), match="own advertisement")


def test_an_unlisted_shop_is_refused_by_its_neighbours_and_excluded_by_the_server():
    """The server seats its own shop 99 in place of listed shop 4 (so the count still fits the roster)."""
    ids = list(range(4))
    config = SecAggConfig(vector_length=D, max_clients=6)
    server, clients = manual_round(5, config, seed=2)
    roster = clients[0].roster
    del clients[4]
    sybil_key = Identity.generate()

    def sybil():
        return SecAggClient(99, sybil_key, Roster({**roster.keys, "sybil": sybil_key.public_key}), policy_for(config))

    # the platform's server, lying: it runs the round without the roster and adds its sybil shop 99
    lying = SecAggServer(config, 1, ids + [99], 0, roster=None)
    setup = lying.setup()
    broadcasts = lying.collect_keys([c.advertise_keys(setup) for c in clients.values()] + [sybil().advertise_keys(setup)])
    assert 99 in broadcasts[0].neighbour_ids
    refuses(clients[0], lambda: clients[0].share_keys(broadcasts[0]), match="not on the roster")
    # an honest server with the roster leaves the sybil out, and the round goes on without it
    honest = SecAggServer(config, 1, ids + [99], 0, roster=roster)
    server, clients = manual_round(5, config, seed=2)
    del clients[4]
    setup = honest.setup()
    broadcasts = honest.collect_keys([c.advertise_keys(setup) for c in clients.values()] + [sybil().advertise_keys(setup)])
    assert 99 not in broadcasts and "roster" in honest.excluded[99]
    relays = honest.collect_shares([clients[i].share_keys(m) for i, m in broadcasts.items()])
    checks = honest.collect_masked_inputs([clients[i].mask_input(m, np.full(D, 0.1)) for i, m in relays.items()])
    requests = honest.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
    result = honest.collect_unmask_responses([clients[i].unmask(m) for i, m in requests.items()])
    assert result.contributors == tuple(ids) and np.allclose(result.mean, 0.1, atol=1e-6)


def test_a_shop_missing_from_its_own_roster_does_not_take_part():
    other = Identity.generate()
    with pytest.raises(SecAggIntegrityError, match="not on its own roster"):
        SecAggClient(0, Identity.generate(), Roster({"a": other.public_key}))


# ----------------------------------------------------------------------------- inconsistent survivor sets


def split_attack(n, colluders, camp_b, seed, colluding_fraction):
    """The server tells the target's neighbours in ``camp_b`` that target 0 dropped, the rest that it
    survived; colluders (the server's own shops) vouch for both sets and hand over both share kinds.

    Returns what the attacker rebuilds of shop 0's update (None if it cannot) and shop 0's update.
    """
    config = SecAggConfig(vector_length=D, max_clients=n, colluders=planned_colluders(n, colluding_fraction))
    server, clients = manual_round(n, config, seed)
    policy = SecAggPolicy(colluding_fraction=colluding_fraction, max_clip=config.clip, max_weight=config.max_weight)
    for client in clients.values():
        client.policy = policy
    vectors = updates(n, seed)
    masked: dict[int, MaskedInput] = {}
    setup = server.setup()
    broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    relays = server.collect_shares([clients[i].share_keys(m) for i, m in broadcasts.items()])
    for i, relay in relays.items():
        masked[i] = clients[i].mask_input(relay, vectors[i])
    checks = server.collect_masked_inputs(list(masked.values()))
    graph, t = server.graph, server.graph.threshold
    everyone = tuple(sorted(checks))
    told = {i: (everyone, ()) if i not in camp_b else (tuple(j for j in everyone if j != 0), (0,)) for i in everyone}

    def payload(sets):
        return survivors_payload(0, 1, sets[0], sets[1], server.graph_seed)

    # tags[sets][(sender, receiver)]: what each survivor vouched for, to each neighbour
    tags: dict[tuple, dict[tuple[int, int], bytes]] = {told[0]: {}, told[min(camp_b)]: {}}
    for i in everyone:
        if i in colluders:  # vouches for both sets, to everyone
            for sets in tags:
                for j in graph[i]:
                    tags[sets][(i, j)] = consistency_tag(clients[i]._pair_keys[j], payload(sets))
            continue
        request = dataclasses.replace(checks[i], survivors=told[i][0], dropped=told[i][1])
        reply = clients[i].sign_survivors(request)
        for j, tag in zip(reply.receiver_ids, reply.tags):
            tags[told[i]][(i, j)] = tag
    self_shares, key_shares = {}, {}

    def opened(holder, kind, key):  # the server opens the sealed share it relayed with a revealed key
        sealed = server._sealed[(0, holder)][0 if kind == SEED_SHARE else 1]
        return int.from_bytes(open_once(key, sealed, share_associated_data(1, 0, holder, kind)), "big")

    for i in everyone:
        if i == 0:
            continue
        if i in colluders:
            seed_key, key_key = clients[i].opener(0, SEED_SHARE), clients[i].opener(0, KEY_SHARE)
            self_shares[i], key_shares[i] = opened(i, SEED_SHARE, seed_key), opened(i, KEY_SHARE, key_key)
            continue
        vouched = tags[told[i]]
        signers = tuple(j for j in sorted(graph[i]) if (j, i) in vouched and j in told[i][0])
        unmask = UnmaskRequest(1, i, told[i][0], told[i][1], signers, tuple(vouched[(j, i)] for j in signers))
        try:
            response = clients[i].unmask(unmask)
        except (SecAggIntegrityError, SecAggProtocolError):
            assert clients[i].state is ClientState.FAILED
            continue
        if 0 in response.self_mask_owners:
            self_shares[i] = opened(i, SEED_SHARE, response.self_mask_openers[response.self_mask_owners.index(0)])
        if 0 in response.mask_key_owners:
            key_shares[i] = opened(i, KEY_SHARE, response.mask_key_openers[response.mask_key_owners.index(0)])
    if len(self_shares) < t or len(key_shares) < t:
        return None, vectors[0], (len(self_shares), len(key_shares), t)
    seed_b = reconstruct(self_shares, t)
    mask_key = private_key_from_bytes(reconstruct(key_shares, t))
    y = masked[0].masked.copy()
    add_signed(y, self_mask(seed_b, 1, 0, config.masked_length), -1)
    for j in graph[0]:
        secret = agree(mask_key, broadcasts[0].mask_public_keys[broadcasts[0].neighbour_ids.index(j)])
        add_signed(y, pair_mask(secret, 1, 0, j, config.masked_length), -pair_sign(0, j))
    return decode(y, config), vectors[0], (len(self_shares), len(key_shares), t)


def test_inconsistent_survivor_sets_without_colluders_reveal_nothing():
    n = 8
    rebuilt, _, (self_count, key_count, t) = split_attack(n, colluders=set(), camp_b={4, 5, 6, 7}, seed=3,
                                                          colluding_fraction=0.2)
    assert rebuilt is None and self_count < t and key_count < t


@pytest.mark.parametrize("colluding_fraction, recovered", [(0.2, False), (0.0, True)])
def test_inconsistent_survivor_sets_with_colluders(colluding_fraction, recovered):
    """16 shops, 3 of them the server's (within the ⌈20%⌉ = 4 the threshold is set for): the split fails.
    With a threshold that assumes nobody colludes (t = 8 of 15) the same attack recovers shop 0's update."""
    n, colluders = 16, {13, 14, 15}
    rebuilt, truth, counts = split_attack(n, colluders, camp_b={7, 8, 9, 10, 11, 12}, seed=4,
                                          colluding_fraction=colluding_fraction)
    if recovered:
        assert rebuilt is not None and np.abs(rebuilt - np.clip(truth, -1, 1)).max() < 1e-6, counts
    else:
        assert rebuilt is None, counts


def test_a_client_signs_one_survivor_set_and_unmasks_only_for_it():
    n = 6
    config = SecAggConfig(vector_length=D, max_clients=n)
    server, clients = manual_round(n, config, seed=5)
    checks = run_to_signatures(server, clients, updates(n))
    clients[1].sign_survivors(checks[1])
    other = dataclasses.replace(checks[1], survivors=(0, 1, 2, 3, 4), dropped=(5,))
    with pytest.raises(SecAggProtocolError, match="state"):  # no second set: the first one stays the only one
        clients[1].sign_survivors(other)
    assert clients[1]._signed == (frozenset(range(n)), frozenset())
    server, clients = manual_round(n, config, seed=5)
    requests = run_to_unmask(server, clients, updates(n))
    changed = dataclasses.replace(requests[2], survivors=(0, 1, 2, 3, 4), dropped=(5,))
    refuses(clients[2], lambda: clients[2].unmask(changed), ShareKindViolation, "differs from the one this client signed")
    few = dataclasses.replace(requests[3], signer_ids=requests[3].signer_ids[:2], tags=requests[3].tags[:2])
    refuses(clients[3], lambda: clients[3].unmask(few), SecAggIntegrityError, "fewer than t")
    # tags the server made up, or moved from one neighbour to another, vouch for nothing
    forged = dataclasses.replace(requests[4], tags=(bytes(32),) * 2 + requests[4].tags[1:-1])
    refuses(clients[4], lambda: clients[4].unmask(forged), SecAggIntegrityError, "fewer than t")


def test_the_client_state_remembers_the_signed_set_across_a_restart():
    n = 5
    config = SecAggConfig(vector_length=D, max_clients=n)
    server, clients = manual_round(n, config, seed=6)
    requests = run_to_unmask(server, clients, updates(n))
    c = clients[0]
    restored = SecAggClient.from_state(c.to_state(), c.identity, c.roster, c.policy)
    changed = dataclasses.replace(requests[0], survivors=(0, 1, 2, 3), dropped=(4,))
    refuses(restored, lambda: restored.unmask(changed), ShareKindViolation, "signed")


# ----------------------------------------------------------------------------- weakened parameters


@pytest.mark.parametrize("change, match", [
    (dict(min_clients=2), "min_clients"),
    (dict(colluders=0), "colluders"),
    (dict(clip=5.0), "clip"),
    (dict(max_weight=10**6), "max_weight"),
])
def test_a_weakened_round_config_is_refused(change, match):
    config = SecAggConfig(vector_length=D, max_clients=8)
    server, clients = manual_round(8, config, seed=7)
    setup = server.setup()
    weak = dataclasses.replace(setup, config=dataclasses.replace(config, frac_bits=None, **change))
    refuses(clients[0], lambda: clients[0].advertise_keys(weak), SecAggProtocolError, match)


def test_a_lowered_degree_is_refused():
    """At 100 shops the server asks for 8 neighbours each: below the shop's floor of 2⌈log2 n⌉ = 14.

    (With any colluding fraction, 8 neighbours cannot even hold the threshold; these shops assume none.)
    """
    n = 100
    config = SecAggConfig(vector_length=4, max_clients=n, degree=8, colluders=0)
    server, clients = manual_round(n, config, seed=8)
    for client in clients.values():
        client.policy = dataclasses.replace(client.policy, colluding_fraction=0.0)
    setup = server.setup()
    broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    refuses(clients[0], lambda: clients[0].share_keys(broadcasts[0]), SecAggProtocolError, "degree")


def test_the_graph_seed_is_fixed_by_the_advertisements():
    """The setup carries no seed; one the server picks (or a member list it edits) is caught."""
    assert "graph_seed" not in SecAggServer(SecAggConfig(vector_length=D, max_clients=5), 1, range(5)).setup().KEYS
    config = SecAggConfig(vector_length=4, max_clients=60, colluders=0)
    server, clients = manual_round(60, config, seed=9)
    for client in clients.values():
        client.policy = dataclasses.replace(client.policy, colluding_fraction=0.0)
    setup = server.setup()
    broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    message = broadcasts[0]
    assert message.neighbour_ids != tuple(j for j in message.members if j != 0)  # a sparse graph: the seed matters
    # the server re-orders the graph by a seed of its own: the neighbour list no longer matches
    from fedinterest.common.secagg.graph import neighbour_graph

    chosen = neighbour_graph(message.members, b"\x01" * 32, None, 0, 0.1)
    keys = {j: k for j, k in zip(message.neighbour_ids, zip(message.share_public_keys, message.mask_public_keys))}
    assert set(chosen[0]) != set(message.neighbour_ids)
    biased = dataclasses.replace(message, neighbour_ids=tuple(sorted(chosen[0])))
    refuses(clients[0], lambda: clients[0].share_keys(biased), SecAggIntegrityError)
    assert keys  # the honest broadcast stays valid for every other shop
    clients[1].share_keys(broadcasts[1])


# ----------------------------------------------------------------------------- misbehaving clients


def test_a_client_sending_shares_to_strangers_is_excluded_and_the_round_goes_on():
    n = 6
    config = SecAggConfig(vector_length=D, max_clients=n)
    server, clients, broadcasts = to_share_stage(n, seed=10, config=config)
    distributions = [clients[i].share_keys(m) for i, m in broadcasts.items()]
    bad = distributions[2]
    distributions[2] = ShareDistribution(bad.round_id, 2, bad.receiver_ids[:-1] + (77,), bad.seed_shares,
                                         bad.key_shares)
    relays = server.collect_shares(distributions)
    assert 2 not in relays and "neighbours" in server.excluded[2]
    checks = server.collect_masked_inputs([clients[i].mask_input(m, np.full(D, 0.2)) for i, m in relays.items()])
    requests = server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
    result = server.collect_unmask_responses([clients[i].unmask(m) for i, m in requests.items()])
    assert 2 not in result.contributors and np.allclose(result.mean, 0.2, atol=1e-6)


# ----------------------------------------------------------------------------- replays and seeds


def test_a_replayed_round_is_refused_across_restarts(tmp_path):
    from fedinterest.client.rounds import claim_round

    claim_round(tmp_path, run_id=5, round_id=3)
    claim_round(tmp_path, run_id=5, round_id=4)
    claim_round(tmp_path, run_id=6, round_id=3)  # another run is another round
    with pytest.raises(SecAggProtocolError, match="replayed"):
        claim_round(tmp_path, run_id=5, round_id=3)  # read back from disk: the record survives a restart


def test_a_deployed_node_refuses_a_seed_and_needs_a_roster(tmp_path):
    from fedinterest.client.node import NodeSettings
    from fedinterest.common.config import ConfigError

    base = {"data-path": str(tmp_path), "state-dir": str(tmp_path / "state")}
    with pytest.raises(ConfigError, match="only for simulations"):
        NodeSettings.from_node_config({**base, "seed": 3})
    assert NodeSettings.from_node_config({**base, "seed": 3, "partition-id": 0}).seed == 3  # simulation engine
    # a deployed node's task runner marks its process: a partition id in its node config opens no door
    from fedinterest.client.node import DEPLOYED_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEPLOYED_ENV, "1")
        with pytest.raises(ConfigError, match="only for simulations"):
            NodeSettings.from_node_config({**base, "seed": 7, "partition-id": 0})
    from fedinterest.deploy.merchant import NodeDir, node_config

    with pytest.raises(ConfigError, match="simulation engine"):
        node_config(NodeDir(tmp_path), data=str(tmp_path), data_format=None, shop=None, epsilon=None,
                    extra={"partition-id": 0, "seed": 7}, backbone="tiny")
    with pytest.raises(ConfigError, match="'roster' is required"):
        NodeSettings.from_node_config(base).secagg_parties()
    roster = tmp_path / "roster.json"
    Roster({"a": Identity.generate().public_key}).save(roster)
    with pytest.raises(ConfigError, match="keys new"):
        NodeSettings.from_node_config({**base, "roster": str(roster)}).secagg_parties()


def test_a_deployed_node_loads_only_its_own_backbone_pinned_by_hash(tmp_path):
    """The server names the backbone in every round; a deployed node refuses any but its own, and refuses its
    own when the weights on disk no longer have the pinned hash."""
    import shutil

    from fedinterest.client.node import NodeSettings
    from fedinterest.common.config import ConfigError
    from fedinterest.common.model.backbone import resolve_backbone, weights_sha256

    base = {"data-path": str(tmp_path), "state-dir": str(tmp_path / "state")}
    default = NodeSettings.from_node_config(base)
    assert default.backbone == "minilm"
    with pytest.raises(ConfigError, match="refuses any other"):
        default.check_backbone("tiny")
    with pytest.raises(ConfigError, match="refuses any other"):
        default.check_backbone(str(tmp_path / "the-platforms-own-checkpoint"))
    copy = tmp_path / "backbone"
    shutil.copytree(resolve_backbone("tiny").source, copy)
    pinned = weights_sha256(resolve_backbone(str(copy)))
    node = NodeSettings.from_node_config({**base, "backbone": str(copy), "backbone-sha256": pinned})
    node.check_backbone(str(copy))  # its own, unchanged
    weights = next(p for p in copy.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ConfigError, match="not the pinned"):
        node.check_backbone(str(copy))
    with pytest.raises(ConfigError, match="backbone-sha256"):
        NodeSettings.from_node_config({**base, "backbone": str(copy)}).check_backbone(str(copy))
    # a simulation node (Flower's engine) follows the run's backbone
    NodeSettings.from_node_config({**base, "partition-id": 0}).check_backbone("tiny")


def test_a_shops_state_is_its_own(tmp_path):
    """The state directory is 0700 (tightened if it was wider) and the subset key 0600."""
    import os
    import stat

    from fedinterest.client.ledger import PrivacyLedger
    from fedinterest.client.shop import subset_key

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    subset_key(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "subset.key").stat().st_mode) == 0o600
    from fedinterest.client.privacy import PrivacyTerms

    other = tmp_path / "other"
    PrivacyLedger.open(other).fix_terms(PrivacyTerms("user", 1e-4, "prv"))
    assert stat.S_IMODE(other.stat().st_mode) == 0o700
