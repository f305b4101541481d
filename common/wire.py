"""Every message between the ServerApp and the ClientApps, declared in one place.

A federated round is five message types. The server sends the global adapter only with
``train``; clients answer every stage with SecAgg+ messages (``common.secagg.messages``) and a
few whitelisted scalar metrics, never a plaintext update, text, or a user or item id::

    message type          server -> client                     client -> server
    train                 global, config, task, secagg(setup)  secagg(KeyAdvertisement), metrics(OPENING)
    train.share_keys      secagg(KeyBroadcast)                 secagg(ShareDistribution)
    train.masked_input    secagg(ShareRelay)                   secagg(MaskedInput fields), masked(uint32)
    train.consistency     secagg(ConsistencyRequest)           secagg(ConsistencySignature)
    train.unmask          secagg(UnmaskRequest)                secagg(UnmaskResponse)
    evaluate              global, config, task, secagg(setup)  secagg(KeyAdvertisement), metrics(OPENING)
    evaluate.share_keys   as train.share_keys … the masked vector is the shop's noised evaluation counts
    query                 task(catalogue), secagg(setup)       secagg(KeyAdvertisement), metrics(OPENING)
    query.share_keys      as train.share_keys … the masked vector is the shop's noised engagement per category

A train reply says only whether the shop took part and its privacy terms: codes for its unit and
accountant, δ and ε spent as powers (of ten and two) they stay below; no loss, no step count, no
time. Its SecAgg weight is public and the same for every shop (``SHOP_WEIGHT``: the global update
is the plain mean over shops, so nothing on the wire depends on a shop's size), sent beside its
masked vector and checked on its own (``secagg.server.valid_weight``). A refused or failed request comes back as a Flower error whose code is one
of ``ERROR_CODES``, never the exception's text (that stays in the shop's log).

``evaluate`` is a secure round too: each shop scores the adapter on its test period and sends the
noised counts of ``common.evaluation.FIELDS`` (each privacy unit's share bounded, the release charged to
its ledger) through the SecAgg+ stages; the server learns only their sum. A shop evaluates one
adapter per round, and only the one the federation then trains from (``client.rounds``).

``query`` opens a federated statistics round before training (``query.kind`` in its task record):
``engagement`` per catalogue category, from which the label space is chosen, then ``label-flows``
(transitions and label totals over the taxonomy) for the scorer's priors. Each shop reserves the
release in its ledger, adds its own Gaussian noise, and the four SecAgg+ stages sum the noised
vectors (weight 1 per shop).

A shop that declines a round (its privacy ledger refuses) answers ``train`` with metrics only:
``declined=1`` and a ``decline_code`` from ``DECLINE_REASONS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .secagg.messages import (
    ConsistencyRequest, ConsistencySignature, KeyAdvertisement, KeyBroadcast, MaskedInput, RoundSetup,
    ShareDistribution, ShareRelay, UnmaskRequest, UnmaskResponse,
)

# message types
TRAIN = "train"
SHARE_KEYS = "train.share_keys"
MASKED_INPUT = "train.masked_input"
CONSISTENCY = "train.consistency"
UNMASK = "train.unmask"
EVALUATE = "evaluate"
EVALUATE_SHARE_KEYS = "evaluate.share_keys"
EVALUATE_MASKED_INPUT = "evaluate.masked_input"
EVALUATE_CONSISTENCY = "evaluate.consistency"
EVALUATE_UNMASK = "evaluate.unmask"
QUERY = "query"
QUERY_SHARE_KEYS = "query.share_keys"
QUERY_MASKED_INPUT = "query.masked_input"
QUERY_CONSISTENCY = "query.consistency"
QUERY_UNMASK = "query.unmask"

#: The five stages of a secure round: opening (train or query), share keys, masked input, consistency, unmask.
TRAIN_STAGES = (TRAIN, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK)
QUERY_STAGES = (QUERY, QUERY_SHARE_KEYS, QUERY_MASKED_INPUT, QUERY_CONSISTENCY, QUERY_UNMASK)
EVALUATE_STAGES = (EVALUATE, EVALUATE_SHARE_KEYS, EVALUATE_MASKED_INPUT, EVALUATE_CONSISTENCY, EVALUATE_UNMASK)

# record names inside a message's RecordDict
GLOBAL = "global"  # ArrayRecord: the global adapter, canonical keys (server -> client)
CONFIG = "config"  # ConfigRecord: round settings (server -> client)
TASK = "task"  # ConfigRecord: taxonomy, split times, task settings (server -> client)
SECAGG = "secagg"  # ConfigRecord: a SecAgg+ message's fields (both ways)
MASKED = "masked"  # ArrayRecord: the masked vector, uint32 (client -> server)
METRICS = "metrics"  # MetricRecord: whitelisted scalars (client -> server)

MASKED_ARRAY = "masked"  # the one array inside the MASKED record

#: What a shop says of its guarantee: codes for its privacy unit and accountant, δ as a power of
#: ten it stays below (δ is a public constant by default, so the code tells nothing of the shop), and the
#: ε it has spent as a power of two it stays below (the exact ε would tell its sampling rate).
TERMS_METRICS = ("privacy_unit", "accountant", "delta_log10")
UNIT_CODES = {"user": 1, "example": 2}
ACCOUNTANT_CODES = {"prv": 1, "rdp": 2}
EPSILON_LOG2_RANGE = (-6, 10)  # ε spent is reported as 2^k for k in this range: at most 1/64 ... 1024
#: The metrics of an opening reply (train, evaluate, query): whether the shop takes part, and its terms.
OPENING_METRICS = ("declined", "decline_code", "epsilon_log2", *TERMS_METRICS)
TRAIN_METRICS = QUERY_METRICS = EVALUATE_METRICS = OPENING_METRICS
#: A shop's statistics or evaluation vector sums one vector of L2 norm <= 1 per privacy unit, plus its
#: Gaussian noise. The platform publishes the largest shop it expects (``max-shop-customers``); a
#: release is scaled into ``release_bound(...)`` before masking and the secure sum is projected onto
#: n times it, so one shop adds at most as much as a shop of that size could, whatever it sends.
DEFAULT_MAX_SHOP_CUSTOMERS = 10_000
NOISE_ALLOWANCE = 128.0  # L2 room per sqrt(element) for the noise: σ·Δ up to 64·2 fits unscaled
#: SecAgg+ round ids of the statistics rounds (``query.kind``): apart from training rounds 1, 2, ...
STATISTICS_ROUNDS = {"engagement": 2**40, "label-flows": 2**40 + 1}
EVALUATION_ROUND_BASE = 2**41  # SecAgg+ round id of the evaluation after training round r: base + r


def release_bound(max_customers: int, length: int) -> float:
    """The L2 (and per-element) bound of one shop's noised statistics or evaluation vector of ``length``."""
    import math

    return float(max_customers) + NOISE_ALLOWANCE * (math.sqrt(length) + 3.0)


def statistics_round_id(kind: str) -> int:
    """The SecAgg+ round id of a statistics ``query`` of ``kind``; an unknown kind is refused."""
    from .config import ConfigError

    if kind not in STATISTICS_ROUNDS:
        raise ConfigError(f"the server asks for statistics of an unknown kind {kind!r}")
    return STATISTICS_ROUNDS[kind]


def adapter_subject(state: "dict[str, np.ndarray]") -> bytes:
    """The 32-byte digest survivors vouch for in a training or evaluation round: the adapter's."""
    return bytes.fromhex(adapter_digest(state))


def request_subject(record: dict) -> bytes:
    """The 32-byte digest survivors vouch for in a statistics round: the request (its task record)."""
    import hashlib
    import json

    canonical = json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()},
                           sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).digest()


def secagg_round_id(stages: tuple[str, ...], server_round: int) -> int:
    """The SecAgg+ round id a shop expects for ``server_round`` of a training or evaluation round."""
    return EVALUATION_ROUND_BASE + server_round if stages[0] == EVALUATE else server_round


def epsilon_code(epsilon: float) -> int:
    """The smallest k (within ``EPSILON_LOG2_RANGE``) with ε ≤ 2^k: what a shop says of its spend."""
    import math

    low, high = EPSILON_LOG2_RANGE
    return int(min(max(math.ceil(math.log2(max(float(epsilon), 2.0**low))), low), high))

DECLINE_BUDGET = 1  # the shop's privacy ledger refuses the round
DECLINE_NO_DATA = 2  # the shop has no training examples in the training period
DECLINE_REASONS = {
    DECLINE_BUDGET: "privacy budget exhausted",
    DECLINE_NO_DATA: "no training examples",
}

#: The only error a shop sends back (Flower ``Error.code``); the details stay in the shop's own log.
ERROR_REFUSED = 1001  # the shop refused the request: a protocol, signature or floor violation
ERROR_ABORTED = 1002  # too few clients, neighbours or signatures for the round to finish
ERROR_CONFIG = 1003  # the shop's own node config or data is not usable
ERROR_INTERNAL = 1004  # anything else
ERROR_UNTRUSTED_APP = 1005  # the node runs only the release its merchant installed; the run's bundle is another
ERROR_CODES = {
    ERROR_REFUSED: "refused (protocol, signature or floor violation)",
    ERROR_ABORTED: "aborted (too few clients for the round)",
    ERROR_CONFIG: "the shop's node config or data is not usable",
    ERROR_INTERNAL: "internal error on the shop",
    ERROR_UNTRUSTED_APP: "refused: the app bundle is not the release this shop installed",
}


#: The public SecAgg weight of every shop's update: a constant, so that no weight tells a shop's size
#: (a count of examples would, even bucketed, to a server that chooses who takes part).
SHOP_WEIGHT = 1


def safe_uint32_vector(array, length: int | None = None) -> np.ndarray:
    """A Flower ``Array`` as a 1-D uint32 vector, checked before a byte is decoded.

    Serialisation type, dtype and shape are read from the array's fields and the ``.npy`` header,
    and the byte length must match them exactly, so a crafted header cannot make the server
    allocate (``np.load`` is never called). Raises ``ValueError`` naming the problem.
    """
    import io

    if getattr(array, "stype", None) != "numpy.ndarray":
        raise ValueError(f"array serialisation {getattr(array, 'stype', None)!r} is not numpy.ndarray")
    if getattr(array, "dtype", None) != "uint32":
        raise ValueError(f"array dtype {getattr(array, 'dtype', None)!r} is not uint32")
    shape = tuple(getattr(array, "shape", ()) or ())
    if len(shape) != 1 or (length is not None and shape[0] != length):
        raise ValueError(f"array shape {shape} is not ({'d' if length is None else length},)")
    data = getattr(array, "data", b"")
    if not isinstance(data, bytes):
        raise ValueError("array data is not bytes")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(
            stream, max_header_size=1024)
    except Exception as exc:  # numpy says what is wrong with the header
        raise ValueError(f"array header is not a .npy header: {exc}") from None
    header_shape, fortran, dtype = header
    if tuple(header_shape) != shape or np.dtype(dtype) != np.dtype("<u4"):
        raise ValueError(f"array header says {dtype}{tuple(header_shape)}, its fields say uint32{shape}")
    offset = stream.tell()
    if len(data) - offset != 4 * shape[0]:
        raise ValueError(f"array holds {len(data) - offset} bytes for {shape[0]} uint32 values")
    return np.frombuffer(data, dtype="<u4", offset=offset).astype(np.uint32, copy=False)


def terms_to_metrics(unit: str, accountant: str, delta: float) -> dict[str, int]:
    import math

    return {"privacy_unit": UNIT_CODES[unit], "accountant": ACCOUNTANT_CODES[accountant],
            "delta_log10": int(math.ceil(math.log10(delta)))}


def terms_from_metrics(metrics: dict) -> dict | None:
    """``{"unit", "accountant", "delta_at_most"}`` from a reply's metrics (None if it sent none)."""
    if not all(k in metrics for k in TERMS_METRICS):
        return None
    units = {v: k for k, v in UNIT_CODES.items()}
    accountants = {v: k for k, v in ACCOUNTANT_CODES.items()}
    return {"unit": units.get(int(metrics["privacy_unit"]), "unknown"),
            "accountant": accountants.get(int(metrics["accountant"]), "unknown"),
            "delta_at_most": 10.0 ** int(metrics["delta_log10"])}


@dataclass(frozen=True)
class Reply:
    """What one client reply may contain: record name -> kind, and the SecAgg message it carries."""

    records: dict[str, str]
    secagg: type | None = None
    metrics: tuple[str, ...] = ()


#: Server -> client: the SecAgg message each stage carries in its SECAGG record.
REQUESTS: dict[str, type | None] = {
    TRAIN: RoundSetup,
    SHARE_KEYS: KeyBroadcast,
    MASKED_INPUT: ShareRelay,
    CONSISTENCY: ConsistencyRequest,
    UNMASK: UnmaskRequest,
    EVALUATE: RoundSetup,
    QUERY: RoundSetup,
    QUERY_SHARE_KEYS: KeyBroadcast,
    QUERY_MASKED_INPUT: ShareRelay,
    QUERY_CONSISTENCY: ConsistencyRequest,
    QUERY_UNMASK: UnmaskRequest,
}

#: Client -> server: everything a reply may hold. Anything else is a protocol violation.
REPLIES: dict[str, tuple[Reply, ...]] = {
    TRAIN: (
        Reply({SECAGG: "config", METRICS: "metrics"}, KeyAdvertisement, TRAIN_METRICS),
        Reply({METRICS: "metrics"}, None, TRAIN_METRICS),  # declined
    ),
    SHARE_KEYS: (Reply({SECAGG: "config"}, ShareDistribution),),
    MASKED_INPUT: (Reply({SECAGG: "config", MASKED: "array"}, MaskedInput),),
    CONSISTENCY: (Reply({SECAGG: "config"}, ConsistencySignature),),
    UNMASK: (Reply({SECAGG: "config"}, UnmaskResponse),),
    EVALUATE: (
        Reply({SECAGG: "config", METRICS: "metrics"}, KeyAdvertisement, EVALUATE_METRICS),
        Reply({METRICS: "metrics"}, None, EVALUATE_METRICS),  # declined
    ),
    QUERY: (
        Reply({SECAGG: "config", METRICS: "metrics"}, KeyAdvertisement, QUERY_METRICS),
        Reply({METRICS: "metrics"}, None, QUERY_METRICS),  # declined
    ),
}
for _train, _query, _evaluate in zip(TRAIN_STAGES[1:], QUERY_STAGES[1:], EVALUATE_STAGES[1:]):
    REPLIES[_query] = REPLIES[_evaluate] = REPLIES[_train]
    REQUESTS[_evaluate] = REQUESTS[_train]


def audit_reply(message_type: str, content, masked_length: int | None = None) -> list[str]:
    """Problems with a client reply (empty if it holds only what is declared).

    ``content`` is a Flower ``RecordDict``. Checks record names and kinds, metric names and
    scalar types, the SecAgg message's exact keys (via its ``from_record``), that the only array
    is the uint32 masked vector (of ``masked_length``, when given, checked before it is decoded),
    and that no string or float tensor appears anywhere. Never raises.
    """
    try:
        return _audit(message_type, content, masked_length)
    except Exception as exc:  # a reply crafted to break the audit is a bad reply, nothing more
        return [f"{message_type}: unreadable reply ({type(exc).__name__})"]


def _audit(message_type: str, content, masked_length: int | None) -> list[str]:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    kinds = {"config": ConfigRecord, "metrics": MetricRecord, "array": ArrayRecord}
    present = dict(content.items())
    options = REPLIES.get(message_type)
    if options is None:
        return [f"undeclared message type {message_type!r}"]
    spec = next((r for r in options if set(r.records) == set(present)), None)
    if spec is None:
        return [f"{message_type}: records {sorted(present)} match no declared reply"]
    problems = []
    for name, kind in spec.records.items():
        if not isinstance(present[name], kinds[kind]):
            problems.append(f"{message_type}: record {name} is {type(present[name]).__name__}, declared {kind}")
    if METRICS in present:
        for key, value in present[METRICS].items():
            if key not in spec.metrics:
                problems.append(f"{message_type}: metric {key!r} is not whitelisted")
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(f"{message_type}: metric {key!r} is not a scalar")
    if SECAGG in present:
        record = dict(present[SECAGG].items())
        if any(isinstance(v, str) or (isinstance(v, list) and any(isinstance(x, str) for x in v))
               for v in record.values()):
            problems.append(f"{message_type}: text in the secagg record")
        if MASKED in present:
            arrays = present[MASKED]
            if list(arrays.keys()) != [MASKED_ARRAY]:
                problems.append(f"{message_type}: masked record holds {list(arrays.keys())}")
            else:
                try:
                    record["masked"] = safe_uint32_vector(arrays[MASKED_ARRAY], masked_length)
                except ValueError as exc:
                    return problems + [f"{message_type}: masked array: {exc}"]
        try:
            spec.secagg.from_record(record)
        except Exception as exc:  # the SecAgg parser names the problem
            problems.append(f"{message_type}: {exc}")
    return problems


# ----------------------------------------------------------------------------- conversions


def secagg_to_records(message) -> dict:
    """A SecAgg+ message as the Flower records that carry it (SECAGG, plus MASKED for arrays)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    fields, arrays = {}, {}
    for key, value in message.to_record().items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            fields[key] = [int(v) if isinstance(v, (int, np.integer)) else v for v in value] \
                if isinstance(value, (list, tuple)) else value
    records = {SECAGG: ConfigRecord(fields)}
    if arrays:
        if set(arrays) != {MASKED_ARRAY}:
            raise ValueError(f"undeclared arrays {sorted(arrays)} in {type(message).__name__}")
        records[MASKED] = ArrayRecord({MASKED_ARRAY: Array(arrays[MASKED_ARRAY])})
    return records


def secagg_from_content(content, cls):
    """Parse the SecAgg+ message of type ``cls`` out of a Flower ``RecordDict`` (validating it)."""
    from .secagg import SecAggProtocolError

    if SECAGG not in content:
        raise SecAggProtocolError(f"{cls.__name__}: the message has no {SECAGG} record")
    record = dict(content[SECAGG].items())
    if MASKED in content:
        try:
            record["masked"] = safe_uint32_vector(content[MASKED][MASKED_ARRAY])
        except (ValueError, KeyError) as exc:
            raise SecAggProtocolError(f"{cls.__name__}: masked array: {exc}") from None
    return cls.from_record(record)


def adapter_to_record(state: "dict[str, np.ndarray]"):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({key: Array(np.ascontiguousarray(value, dtype=np.float32)) for key, value in state.items()})


def adapter_from_record(record) -> "dict[str, np.ndarray]":
    return {key: record[key].numpy() for key in record.keys()}


def adapter_digest(state: "dict[str, np.ndarray]") -> str:
    """sha256 over an adapter state's keys and float32 bytes: which adapter a round started from."""
    import hashlib

    h = hashlib.sha256()
    for key, value in state.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return h.hexdigest()
