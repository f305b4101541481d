"""The server against malformed replies: the real ``SecureRound`` (wire audit, SecAgg+ server) over Flower messages.

``LoopbackGrid`` plays the transport: it hands each request to honest SecAgg+ clients (real
``SecAggClient`` state machines, replies built with ``wire.secagg_to_records`` exactly as the
ClientApp builds them) and lets one test corrupt one node's reply at one stage. Every case must
leave the round standing: that node is dropped and the others' mean comes out.
"""

from __future__ import annotations

import uuid
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedinterest.common import wire
from fedinterest.common.secagg import (
    ConsistencyRequest, KeyBroadcast, RoundSetup, SecAggClient, SecAggConfig, ShareRelay, UnmaskRequest,
)
from fedinterest.server.secure_round import SecureRound
from tests.secagg_parties import flower_task, identities, policy_for

N, D, RUN = 6, 24, 7
NODES = list(range(101, 101 + N))
VALUE = 0.125


@pytest.fixture(autouse=True)
def task_identity():
    with flower_task(RUN):
        yield


class LoopbackGrid:
    """Delivers each message to an honest in-process SecAgg+ client; ``corrupt`` may rewrite one reply."""

    class run:
        run_id = RUN

    def __init__(self, config: SecAggConfig, corrupt=None):
        from fedinterest.common.secagg import Roster

        keys = identities(NODES, seed=1)
        roster = Roster({f"shop-{n}": keys[n].public_key for n in NODES})
        self.roster = roster
        self.clients = {n: SecAggClient(n, keys[n], roster, policy_for(config), RUN) for n in NODES}
        self.corrupt = corrupt or (lambda stage, node, content: content)

    def push_messages(self, messages):
        """Every message answered at once; the replies wait for ``pull_messages``, as on a SuperLink."""
        self.replies, ids = getattr(self, "replies", {}), []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what a SuperLink assigns
            node, stage = message.metadata.dst_node_id, message.metadata.message_type
            content = self.corrupt(stage, node, self._answer(node, stage, message.content))
            if content is not None:
                self.replies[message.metadata.message_id] = Message(content, reply_to=message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def _answer(self, node, stage, content) -> RecordDict:
        client = self.clients[node]
        if stage == wire.TRAIN:
            ad = client.advertise_keys(wire.secagg_from_content(content, RoundSetup))
            return RecordDict({**wire.secagg_to_records(ad), wire.METRICS: MetricRecord({"declined": 0})})
        step = {
            wire.SHARE_KEYS: (KeyBroadcast, client.share_keys),
            wire.MASKED_INPUT: (ShareRelay, lambda m: client.mask_input(m, np.full(D, VALUE))),
            wire.CONSISTENCY: (ConsistencyRequest, client.sign_survivors),
            wire.UNMASK: (UnmaskRequest, client.unmask),
        }[stage]
        return RecordDict(wire.secagg_to_records(step[1](wire.secagg_from_content(content, step[0]))))


def run_round(corrupt=None):
    config = SecAggConfig(vector_length=D, max_clients=N)
    grid = LoopbackGrid(config, corrupt)
    result = SecureRound(grid, NODES, config, 1, 5.0, roster=grid.roster).run(lambda node: RecordDict())
    return result


def npy_header(shape: tuple, descr: str = "<u4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    return b"\x93NUMPY\x01\x00" + (len(header) + 1).to_bytes(2, "little") + header + b"\n"


VICTIM = NODES[2]


def secagg_field(stage, key, value):
    """Replace one field of the victim's SecAgg record at ``stage``."""
    def corrupt(s, node, content):
        if s == stage and node == VICTIM:
            record = dict(content[wire.SECAGG].items())
            record[key] = value(record.get(key)) if callable(value) else value
            content[wire.SECAGG] = ConfigRecord(record)
        return content
    return corrupt


def masked_array(array_or_record):
    def corrupt(s, node, content):
        if s == wire.MASKED_INPUT and node == VICTIM:
            content[wire.MASKED] = array_or_record
        return content
    return corrupt


def record_kind(stage):
    def corrupt(s, node, content):
        if s == stage and node == VICTIM:
            content[wire.SECAGG] = ArrayRecord({"x": Array(np.zeros(3, np.float32))})
        return content
    return corrupt


CASES = {
    # the three crashes the review found
    "masked array with another serialisation": masked_array(
        ArrayRecord({wire.MASKED_ARRAY: Array(dtype="uint32", shape=(D,), stype="torch.Tensor", data=b"0" * 4)})),
    "npy header claiming 2**40 elements": masked_array(
        ArrayRecord({wire.MASKED_ARRAY: Array(dtype="uint32", shape=(2**40,), stype="numpy.ndarray",
                                              data=npy_header((2**40,)))})),
    "masked record sent as a ConfigRecord": masked_array(ConfigRecord({wire.MASKED_ARRAY: b"\x00" * 8})),
    # each stage's record: wrong kind, wrong fields, out-of-range or foreign ids, wrong sizes
    "masked vector of float32": masked_array(ArrayRecord({wire.MASKED_ARRAY: Array(np.zeros(D, np.float32))})),
    "masked vector too short": masked_array(ArrayRecord({wire.MASKED_ARRAY: Array(np.zeros(D - 3, np.uint32))})),
    "masked vector oversized": masked_array(ArrayRecord({wire.MASKED_ARRAY: Array(np.zeros(10 * D, np.uint32))})),
    "masked vector 2-D": masked_array(ArrayRecord({wire.MASKED_ARRAY: Array(np.zeros((D, 1), np.uint32))})),
    "header and fields disagree": masked_array(ArrayRecord({wire.MASKED_ARRAY: Array(
        dtype="uint32", shape=(D,), stype="numpy.ndarray", data=npy_header((D,), "<f4") + bytes(4 * D))})),
    **{f"{stage}: record of the wrong kind": record_kind(stage) for stage in wire.TRAIN_STAGES},
    "train: a foreign client id": secagg_field(wire.TRAIN, "client_id", NODES[0]),
    "train: a negative client id": secagg_field(wire.TRAIN, "client_id", -1),
    "train: a short public key": secagg_field(wire.TRAIN, "share_public_key", b"\x01" * 5),
    "train: an oversized signature": secagg_field(wire.TRAIN, "signature", b"\x01" * 10_000),
    "train: a bad signature": secagg_field(wire.TRAIN, "signature", lambda v: bytes(64)),
    "train: text in the record": secagg_field(wire.TRAIN, "mask_public_key", "not bytes"),
    "train: a batch path of half a hash": secagg_field(wire.TRAIN, "batch_path", lambda v: v + b"\x01" * 16),
    "train: a batch path deeper than any batch": secagg_field(wire.TRAIN, "batch_path", b"\x01" * 32 * 7),
    "train: a batch path that proves nothing": secagg_field(wire.TRAIN, "batch_path", lambda v: bytes(len(v) + 32)),
    "train: a batch that does not cover the round": secagg_field(wire.TRAIN, "batch_first_round", 2**40),
    "train: a negative batch round": secagg_field(wire.TRAIN, "batch_first_round", -1),
    "share_keys: shares to strangers": secagg_field(wire.SHARE_KEYS, "receiver_ids", lambda v: [*v[:-1], 999]),
    "share_keys: ids and ciphertexts disagree": secagg_field(wire.SHARE_KEYS, "seed_shares", lambda v: v[:-1]),
    "share_keys: duplicate receivers": secagg_field(wire.SHARE_KEYS, "receiver_ids", lambda v: [v[0]] * len(v)),
    "share_keys: another round": secagg_field(wire.SHARE_KEYS, "round_id", 2),
    "masked_input: another client's id": secagg_field(wire.MASKED_INPUT, "client_id", NODES[0]),
    "consistency: tags to strangers": secagg_field(wire.CONSISTENCY, "receiver_ids", lambda v: [*v[:-1], 999]),
    "consistency: tags of the wrong size": secagg_field(wire.CONSISTENCY, "tags", lambda v: v[:-1]),
    "consistency: a missing field": lambda s, node, content: (
        RecordDict({wire.SECAGG: ConfigRecord({k: v for k, v in content[wire.SECAGG].items() if k != "tags"})})
        if s == wire.CONSISTENCY and node == VICTIM else content),
    "unmask: shares of both kinds": secagg_field(wire.UNMASK, "mask_key_owners", lambda v: [NODES[0]]),
    "unmask: a key of the wrong size": secagg_field(wire.UNMASK, "self_mask_openers", lambda v: v[:-1]),
    "unmask: a key that opens nothing": secagg_field(wire.UNMASK, "self_mask_openers", lambda v: bytes(len(v))),
    "masked_input: a weight that is not a bucket": secagg_field(wire.MASKED_INPUT, "weight", 3),
    "masked_input: a weight above max_weight": secagg_field(wire.MASKED_INPUT, "weight", 4744),
    "unmask: an undeclared extra key": secagg_field(wire.UNMASK, "extra", 1),
    "a metric that is not whitelisted": lambda s, node, content: (
        RecordDict({**dict(content.items()), wire.METRICS: MetricRecord({"declined": 0, "train_loss": 1.5})})
        if s == wire.TRAIN and node == VICTIM else content),
}


def test_an_honest_round_sums_every_shop():
    result = run_round()
    assert result.aborted is None and sorted(result.contributors) == NODES and not result.dropped
    assert np.allclose(result.mean_update, VALUE, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_reply_drops_its_sender_and_the_round_finishes(case):
    result = run_round(CASES[case])
    assert result.aborted is None, result.aborted
    assert VICTIM in result.dropped, result.dropped
    assert set(result.dropped) == {VICTIM}, result.dropped
    assert np.allclose(result.mean_update, VALUE, atol=1e-6)  # every other shop sent VALUE
    if VICTIM not in result.contributors:
        assert len(result.contributors) == N - 1


def test_forged_consistency_tags_vouch_for_nothing_and_the_round_finishes():
    """Only the receiver can check a tag; each honest shop still has t good ones from its other neighbours."""
    result = run_round(secagg_field(wire.CONSISTENCY, "tags", lambda v: bytes(len(v))))
    assert result.aborted is None and np.allclose(result.mean_update, VALUE, atol=1e-6)


def test_a_shop_that_errors_is_dropped_with_its_code_only():
    def error(s, node, content):
        return None if s == wire.SHARE_KEYS and node == VICTIM else content

    result = run_round(error)
    assert result.aborted is None and "no reply" in result.dropped[VICTIM]


def test_the_message_log_keeps_only_replies_the_audit_let_through(tmp_path):
    """The review: an undeclared 20 MB array reached the platform's disk before the reply audit. The log now
    sees a reply only after the audit, so the oversized one is dropped and never written."""
    from fedinterest.server.message_log import MessageLog, read_message_log

    def oversized(s, node, content):
        if s == wire.TRAIN and node == VICTIM:
            content["extra"] = ArrayRecord({"dump": Array(np.zeros(5_000_000, np.float32))})
        return content

    config = SecAggConfig(vector_length=D, max_clients=N)
    grid = LoopbackGrid(config, oversized)
    log = MessageLog(tmp_path / "messages")
    result = SecureRound(grid, NODES, config, 1, 5.0, observe=log, roster=grid.roster).run(lambda node: RecordDict())
    assert VICTIM in result.dropped and result.aborted is None
    entries = read_message_log(tmp_path / "messages")
    assert entries and all(entry["node"] != VICTIM or entry["type"] != wire.TRAIN for entry, _ in entries)
    assert sum(path.stat().st_size for path in (tmp_path / "messages").iterdir()) < 1_000_000
    assert all(a.dtype == np.uint32 for _, arrays in entries for a in arrays.values())


def garbage_dealer(s, node, content):
    """The victim seals random bytes for every neighbour: authentic to nobody."""
    if s == wire.SHARE_KEYS and node == VICTIM:
        record = dict(content[wire.SECAGG].items())
        rng = np.random.default_rng(0)
        for key in ("seed_shares", "key_shares"):
            record[key] = rng.bytes(len(record[key]))
        content[wire.SECAGG] = ConfigRecord(record)
    return content


def test_a_shop_that_seals_garbage_for_everyone_is_named_and_left_out(tmp_path, synthetic_dir):
    """Its neighbours cannot open what it dealt and say so (more of them than the planned colluders), so
    the round it survived aborts naming it; the federation leaves it out of every later round."""
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.data import load_events
    from fedinterest.common.task import build_taxonomy, default_split
    from fedinterest.common.settings import TaskSpec
    from fedinterest.server.federation import Federation
    from fedinterest.server.settings import FederationSettings, save_task_spec

    result = run_round(garbage_dealer)
    assert result.aborted and "could not open" in result.aborted and result.culprits == [VICTIM]

    table = load_events(synthetic_dir)
    split = default_split(table, TaskConfig())
    save_task_spec(TaskSpec(build_taxonomy(table, 10, before=split.val_start), split, TaskConfig()),
                   tmp_path / "task.json")
    federation = Federation(FederationSettings.from_run_config({"task-spec": str(tmp_path / "task.json"),
                                                                "out-dir": str(tmp_path / "run")}),
                            progress=lambda line: None)
    config = SecAggConfig(vector_length=D, max_clients=N)
    grid = LoopbackGrid(config, garbage_dealer)
    federation._secure_round(grid, NODES, config, 1, wire.TRAIN_STAGES, lambda node: RecordDict())
    assert federation.banned == {VICTIM}
    seen = []
    honest = LoopbackGrid(config, lambda s, node, content: (seen.append(node), content)[1])
    later = federation._secure_round(honest, NODES, config, 2, wire.TRAIN_STAGES, lambda node: RecordDict())
    assert VICTIM not in seen and later.aborted is None and VICTIM not in later.contributors
    assert federation._sample(NODES, 3) == [n for n in NODES if n != VICTIM]
