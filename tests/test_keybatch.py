"""Key batches: one signature per shop per batch of rounds, and everything it must still refuse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedinterest.common.secagg import (
    ClientState, Keyring, Roster, SecAggAbort, SecAggClient, SecAggConfig, SecAggIntegrityError, SecAggServer, SeededRandomness,
    SignatureCache,
)
from fedinterest.common.secagg.identity import Identity
from fedinterest.common.secagg.keybatch import (
    KeyBatch, leaf_hash, merkle_levels, merkle_path, root_from_path, round_secrets,
)
from tests.secagg_parties import identities, policy_for

D = 16
N = 6


@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_every_leaf_proves_the_root_and_nothing_else_does(depth):
    leaves = [leaf_hash(bytes([i])) for i in range(2**depth)]
    levels = merkle_levels(leaves)
    root = levels[-1][0]
    for index, leaf in enumerate(leaves):
        path = merkle_path(levels, index)
        assert len(path) == depth and root_from_path(leaf, index, path) == root
        if depth:
            assert root_from_path(leaf, index ^ 1, path) != root  # the position is bound
            assert root_from_path(leaf, index, (bytes(32),) + path[1:]) != root
        assert root_from_path(leaf_hash(b"other"), index, path) != root


class Federation:
    """``N`` shops with keyrings kept across rounds, and a server with its cache, all honest."""

    def __init__(self, depth: int, seed: int = 3, run_id: int = 7) -> None:
        self.keys = identities(range(N), seed)
        self.roster = Roster({f"shop-{i}": k.public_key for i, k in self.keys.items()})
        self.keyrings = {i: Keyring(depth) for i in range(N)}
        self.verified = SignatureCache()
        self.config = SecAggConfig(vector_length=D, max_clients=N)
        self.seed, self.run_id = seed, run_id

    def parties(self, round_id: int) -> tuple[SecAggServer, dict[int, SecAggClient]]:
        server = SecAggServer(self.config, round_id, range(N), self.run_id, self.roster, self.verified)
        clients = {i: SecAggClient(i, self.keys[i], self.roster, policy_for(self.config), self.run_id,
                                   SeededRandomness(self.seed, "client", round_id, i), self.keyrings[i])
                   for i in range(N)}
        return server, clients

    def round(self, round_id: int) -> tuple[np.ndarray, dict[int, set[int]]]:
        """One honest round; returns the mean and each client's neighbours."""
        server, clients = self.parties(round_id)
        setup = server.setup()
        broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
        relays = server.collect_shares([clients[i].share_keys(m) for i, m in broadcasts.items()])
        checks = server.collect_masked_inputs([clients[i].mask_input(m, np.full(D, 0.01 * i)) for i, m in relays.items()])
        requests = server.collect_signatures([clients[i].sign_survivors(m) for i, m in checks.items()])
        result = server.collect_unmask_responses([clients[i].unmask(m) for i, m in requests.items()])
        return result.mean, {i: set(m.neighbour_ids) for i, m in broadcasts.items()}


def test_a_run_verifies_each_shops_batch_once(monkeypatch):
    signs = []
    monkeypatch.setattr(Identity, "sign", lambda self, payload, _sign=Identity.sign: signs.append(1) or _sign(self, payload))
    federation = Federation(depth=3)
    seen: dict[int, set[int]] = {i: set() for i in range(N)}
    for round_id in range(1, 9):  # one batch of 8 rounds
        mean, neighbours = federation.round(round_id)
        assert np.allclose(mean, 0.01 * np.mean(range(N)), atol=1e-6)
        for i, ids in neighbours.items():
            seen[i] |= ids
    assert len(signs) == N  # one batch signature per shop for the 8 rounds
    for i, keyring in federation.keyrings.items():
        assert keyring.verified.verifications == len(seen[i])  # each neighbour's batch checked once
    assert federation.verified.verifications == N
    federation.round(9)  # past the batch: a new one, signed and checked afresh
    assert len(signs) == 2 * N and federation.verified.verifications == 2 * N


def test_an_advertisement_replayed_into_a_later_round_of_its_batch_is_refused():
    """The batch root is already trusted (cache warm); the replayed keys still fail: the leaf binds the round."""
    federation = Federation(depth=2)
    server, clients = federation.parties(1)
    setup = server.setup()
    old = {c.client_id: c.advertise_keys(setup) for c in clients.values()}
    server.collect_keys(old.values())
    server, clients = federation.parties(2)
    setup = server.setup()
    broadcasts = server.collect_keys([c.advertise_keys(setup) for c in clients.values()])
    victim, message = clients[0], broadcasts[0]
    j = message.neighbour_ids[0]
    replayed = dataclasses.replace(
        message, share_public_keys=(old[j].share_public_key,) + message.share_public_keys[1:],
        mask_public_keys=(old[j].mask_public_key,) + message.mask_public_keys[1:],
        commitments=(old[j].self_mask_commitment,) + message.commitments[1:])
    with pytest.raises(SecAggIntegrityError, match="signature does not verify"):
        victim.share_keys(replayed)
    assert victim.state is ClientState.FAILED
    # and the server, whose cache trusts the root, excludes a client that replays its own old keys
    server, clients = federation.parties(3)
    setup = server.setup()
    ads = [c.advertise_keys(setup) for c in clients.values()]
    ads[1] = dataclasses.replace(old[1], round_id=3)
    server.collect_keys(ads)
    assert "signature does not verify" in server.excluded[1]


def test_a_batch_is_bound_to_its_run_and_shop():
    federation = Federation(depth=2)
    server, clients = federation.parties(1)
    ad = clients[1].advertise_keys(server.setup())
    for run_id, client_id in ((federation.run_id + 1, 1), (federation.run_id, 2)):  # another run, another seat
        other = SecAggServer(federation.config, 1, range(N), run_id, federation.roster, federation.verified)
        other.setup()
        with pytest.raises(SecAggAbort):  # the only advertisement is excluded: too few left
            other.collect_keys([dataclasses.replace(ad, client_id=client_id)])
        assert "signature does not verify" in other.excluded[client_id]


def test_the_keyring_survives_a_restart_and_forgets_used_secrets():
    federation = Federation(depth=3)
    federation.round(1)
    keyring = federation.keyrings[0]
    batch = keyring.batches[0]
    state = ConfigRecord(keyring.to_state())  # what the node keeps in its context.state
    restored = Keyring.from_state(dict(state.items()))
    assert restored.verified.entries() == keyring.verified.entries()
    assert restored.batches[0].signature == batch.signature and restored.batches[0].next_round == 2
    with pytest.raises(ValueError, match="not an unused round"):
        restored.batches[0].take(1)  # round 1's secrets cannot be derived again from the kept state
    start = SeededRandomness(federation.seed, "client", 1, 0)(32)  # the batch's seed: round 1's chain value
    used = round_secrets(start)
    kept = b"".join(value for value in state.values() if isinstance(value, bytes))
    assert all(secret not in kept for secret in (start, used.share_private, used.mask_private, used.self_mask_seed))
    federation.keyrings = {i: Keyring.from_state(dict(ConfigRecord(k.to_state()).items()))
                           for i, k in federation.keyrings.items()}
    mean, _ = federation.round(2)  # the restored keyrings go on with the same batch, nothing re-signed
    assert np.allclose(mean, 0.01 * np.mean(range(N)), atol=1e-6)
    assert federation.keyrings[0].batches[0].signature == batch.signature


def test_a_round_id_below_the_batch_gets_fresh_keys():
    identity = Identity.generate()
    batch = KeyBatch.create(identity, 1, 0, 10, 2, SeededRandomness(1, "batch"))
    first, _ = batch.take(11)
    keyring = Keyring(2, [batch])
    secrets, proof = keyring.round_keys(identity, 1, 10, 0, SeededRandomness(2, "batch"))  # 10 < next unused
    assert proof.first_round == 10 and proof.signature != batch.signature and secrets != first
    assert len(keyring.batches) == 2
