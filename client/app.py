"""The shop's Flower ClientApp (Message API).

``train`` trains one private round, keeps the update on the node and opens a SecAgg+ round by
advertising keys signed with the shop's identity key; the next four ``train.*`` stages share keys,
send the masked update, vouch for the survivor set and help unmask. ``evaluate`` scores the global
adapter on the shop's test period and sends its noised counts through the same four stages
(``evaluate.*``), once per round and only for the adapter the federation then trains from
(``client.rounds``); ``query`` does the same for the platform's statistics. Replies hold only
what ``common.wire`` declares; a refused or
failed request answers with an error code from ``wire.ERROR_CODES``, and the reason stays in this
node's log. Between stages the update and the SecAgg+ secrets live in the node's own
``context.state``, never in a message; a refused round is marked failed there, so it cannot be
retried.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedinterest.common import wire
from fedinterest.common.config import ConfigError
from fedinterest.common.model import flatten
from fedinterest.common.secagg import (
    ConsistencyRequest, KeyBroadcast, Keyring, RoundSetup, SecAggAbort, SecAggClient, SecAggError, SecAggProtocolError,
    SeededRandomness, ShareRelay, UnmaskRequest,
)
from fedinterest.common.settings import RoundConfig, TaskSpec

from .node import NodeSettings, load_shop, load_table
from .rounds import claim_aggregated, claim_evaluation, claim_round, claim_training

log = logging.getLogger("fedinterest.client")

PENDING = "fedinterest.pending"  # ArrayRecord: this round's plaintext update (node-local)
SECRETS = "fedinterest.secagg"  # ConfigRecord: SecAgg+ client state (node-local)
KEYRING = "fedinterest.keyring"  # ConfigRecord: the shop's key batches and verified signatures (node-local)
AUDIT_ENV = "FEDINTEREST_AUDIT_DIR"  # tests only: where a node writes its plaintext updates to compare

def _settings(context: Context) -> NodeSettings:
    return NodeSettings.from_node_config(dict(context.node_config))


def _round(message: Message) -> tuple[RoundConfig, TaskSpec]:
    content = message.content
    return (RoundConfig.from_record_dict(dict(content[wire.CONFIG].items())),
            TaskSpec.from_record_dict(dict(content[wire.TASK].items())))


def _randomness(node: NodeSettings, server_round: int, stage: str):
    """The node's own randomness: the OS CSPRNG, or seeded from its node config (simulations)."""
    if node.seed is None:
        return os.urandom
    return SeededRandomness(node.seed, "node", server_round, stage)


def _training_seed(node: NodeSettings, server_round: int) -> int | None:
    """None on deployed nodes: DP sampling and noise then come from the OS CSPRNG, afresh each step."""
    if node.seed is None:
        return None
    return int.from_bytes(_randomness(node, server_round, "train")(8), "big") >> 2


def _terms_metrics(ledger, epsilon: float | None = None) -> dict:
    """The shop's privacy unit, accountant and δ bucket, once its ledger has fixed them, and ε spent as a bucket."""
    terms = ledger.terms if ledger is not None else None
    metrics = wire.terms_to_metrics(terms.unit, terms.accountant, terms.delta) if terms is not None else {}
    if epsilon is not None:
        metrics["epsilon_log2"] = wire.epsilon_code(epsilon)
    return metrics


def _reply(message: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=message)


def _save_secagg(context: Context, client: SecAggClient) -> None:
    """Keep the SecAgg+ client (secrets included) and its keyring in the node's own state between stages."""
    context.state[SECRETS] = ConfigRecord(client.to_state())
    context.state[KEYRING] = ConfigRecord(client.keyring.to_state())


def _keyring(context: Context) -> Keyring:
    """The node's key batches and verified signatures from earlier rounds (a fresh keyring on a new node)."""
    if KEYRING not in context.state:
        return Keyring()
    return Keyring.from_state(dict(context.state[KEYRING].items()))


def _restore_secagg(context: Context, stage: str) -> SecAggClient:
    if SECRETS not in context.state:
        raise SecAggError("no SecAgg+ round in progress on this node")
    state = dict(context.state[SECRETS].items())
    node = _settings(context)
    identity, roster, policy = node.secagg_parties()
    randomness = _randomness(node, int(state.get("round_id", 0)), stage)
    return SecAggClient.from_state(state, identity, roster, policy, randomness, _keyring(context))


def _open_round(message: Message, context: Context, node: NodeSettings,
                expected_round: int) -> tuple[RoundSetup, SecAggClient]:
    """The round's setup and a new SecAgg+ client, after the replay check (before any data is read).

    ``expected_round``: the SecAgg+ round id the message itself implies (its round config, or its
    statistics kind); a setup for any other round is refused, so no message can burn another's id.
    """
    setup = wire.secagg_from_content(message.content, RoundSetup)
    if setup.round_id != expected_round:
        raise SecAggProtocolError(f"the SecAgg+ round {setup.round_id} is not the round {expected_round} "
                                  "the message itself names")
    identity, roster, policy = node.secagg_parties()
    client = SecAggClient(context.node_id, identity, roster, policy, run_id=message.metadata.run_id,
                          randomness=_randomness(node, setup.round_id, "keys"), keyring=_keyring(context))
    policy.check_config(setup.config, len(roster))  # refuse a weak proposal before anything is spent on it
    policy.check_members(len(setup.participants), setup.config)
    claim_round(node.state_dir, message.metadata.run_id, setup.round_id)
    return setup, client


def train(message: Message, context: Context) -> Message:
    """One private local round, then the SecAgg+ key advertisement."""
    node = _settings(context)
    round_config, task = _round(message)
    node.check_backbone(round_config.backbone)
    setup, client = _open_round(message, context, node, wire.secagg_round_id(wire.TRAIN_STAGES, round_config.round))
    global_state = wire.adapter_from_record(message.content[wire.GLOBAL])
    claim_training(node.state_dir, message.metadata.run_id, round_config.round, wire.adapter_digest(global_state))
    shop = load_shop(node, round_config, task)
    outcome = shop.train_round(
        global_state,
        total_rounds=round_config.rounds,
        server_round=round_config.round,
        server_epsilon=round_config.epsilon_cap or None,
        seed=_training_seed(node, round_config.round),
        replayable=node.seed is not None,
        evaluations=round_config.evaluations,
    )
    terms = _terms_metrics(shop.ledger, outcome.epsilon)
    if outcome.declined:
        log.warning("declining round %s: %s", round_config.round, outcome.reason)  # stays on the node
        code = wire.DECLINE_BUDGET if outcome.code == "budget" else wire.DECLINE_NO_DATA
        return _reply(message, {wire.METRICS: MetricRecord({"declined": 1, "decline_code": code, **terms})})

    update = flatten(outcome.state) - flatten(global_state)
    weight = wire.SHOP_WEIGHT
    log.info("round %s: trained %s steps, loss %.4f (stays on this node)", round_config.round,
             outcome.stats.steps, outcome.stats.mean_loss)
    advertisement = client.advertise_keys(setup, wire.adapter_subject(global_state))
    context.state[PENDING] = ArrayRecord({"update": _array(update), "weight": _array(np.array([weight]))})
    _save_secagg(context, client)
    _audit(node, round_config.round, update, weight)
    metrics = {"declined": 0, **terms}
    return _reply(message, {**wire.secagg_to_records(advertisement), wire.METRICS: MetricRecord(metrics)})


def query(message: Message, context: Context) -> Message:
    """A federated statistics round: this shop's noised vector (``client.statistics.answer_query``).

    The release is reserved in the shop's ledger first (and declined if over budget); the
    vector then waits on the node for the SecAgg+ stages, exactly like a training update.
    """
    from .ledger import PrivacyLedger
    from .statistics import answer_query

    node = _settings(context)
    request = dict(message.content[wire.TASK].items())
    setup, client = _open_round(message, context, node, wire.statistics_round_id(str(request.get("query.kind"))))
    _, outcome = answer_query(request, load_table(node), node.privacy, node.state_dir,
                              seed=_training_seed(node, setup.round_id), ledger_home=node.ledger_home,
                              raise_budget=node.raise_budget, reset_ledger=node.reset_ledger)
    ledger = PrivacyLedger.open(node.state_dir) if node.privacy.private else None
    return _answer_release(message, context, setup, client, outcome, ledger, "the statistics round",
                           wire.request_subject(request))


def _answer_release(message: Message, context: Context, setup: RoundSetup, client: SecAggClient, outcome,
                    ledger, what: str, subject: bytes) -> Message:
    """Reply to a statistics or evaluation round: a decline, or the key advertisement with the noised
    vector waiting on the node (weight 1) for the SecAgg+ stages."""
    metrics = {"declined": int(outcome.declined), **_terms_metrics(ledger, outcome.epsilon)}
    if outcome.declined:
        log.warning("declining %s: %s", what, outcome.reason)  # stays on the node
        return _reply(message, {wire.METRICS: MetricRecord({**metrics, "decline_code": wire.DECLINE_BUDGET})})
    advertisement = client.advertise_keys(setup, subject)
    context.state[PENDING] = ArrayRecord({"update": _array(outcome.vector.ravel()), "weight": _array(np.array([1]))})
    _save_secagg(context, client)
    return _reply(message, {**wire.secagg_to_records(advertisement), wire.METRICS: MetricRecord(metrics)})


def share_keys(message: Message, context: Context) -> Message:
    client = _restore_secagg(context, "shares")
    reply = client.share_keys(wire.secagg_from_content(message.content, KeyBroadcast))
    _save_secagg(context, client)
    return _reply(message, wire.secagg_to_records(reply))


def masked_input(message: Message, context: Context) -> Message:
    client = _restore_secagg(context, "mask")
    pending = context.state[PENDING]
    reply = client.mask_input(wire.secagg_from_content(message.content, ShareRelay),
                              pending["update"].numpy(), int(pending["weight"].numpy()[0]))
    del context.state[PENDING]  # the plaintext update is not needed any more
    _save_secagg(context, client)
    return _reply(message, wire.secagg_to_records(reply))


def consistency(message: Message, context: Context) -> Message:
    client = _restore_secagg(context, "consistency")
    reply = client.sign_survivors(wire.secagg_from_content(message.content, ConsistencyRequest))
    _save_secagg(context, client)
    return _reply(message, wire.secagg_to_records(reply))


def unmask(message: Message, context: Context) -> Message:
    client = _restore_secagg(context, "unmask")
    reply = client.unmask(wire.secagg_from_content(message.content, UnmaskRequest))
    del context.state[SECRETS]
    if message.metadata.message_type == wire.UNMASK:  # this shop's update is in the training round's sum
        claim_aggregated(_settings(context).state_dir, message.metadata.run_id, client.round_id)
    return _reply(message, wire.secagg_to_records(reply))


def evaluate(message: Message, context: Context) -> Message:
    """A secure evaluation round: this shop's noised counts of the global adapter on its test period.

    Refused unless it is the round's first evaluation on this shop and the adapter is the one the
    next training round must start from (``client.rounds``); the release is charged to the ledger.
    """
    from .ledger import PrivacyLedger

    node = _settings(context)
    round_config, task = _round(message)
    node.check_backbone(round_config.backbone)
    setup, client = _open_round(message, context, node,
                                wire.secagg_round_id(wire.EVALUATE_STAGES, round_config.round))
    adapter = wire.adapter_from_record(message.content[wire.GLOBAL])
    claim_evaluation(node.state_dir, message.metadata.run_id, round_config.round, wire.adapter_digest(adapter))
    shop = load_shop(node, round_config, task)
    outcome = shop.release_evaluation(adapter, server_round=round_config.round,
                                      evaluations=round_config.evaluations,
                                      per_user=round_config.eval_per_user or None,
                                      seed=_training_seed(node, wire.EVALUATION_ROUND_BASE + round_config.round))
    ledger = PrivacyLedger.open(node.state_dir) if node.privacy.private else None
    return _answer_release(message, context, setup, client, outcome, ledger,
                           f"the evaluation of round {round_config.round}", wire.adapter_subject(adapter))


# ----------------------------------------------------------------------------- the app


def error_code(exc: BaseException) -> int:
    """The declared code (``wire.ERROR_CODES``) a shop sends instead of an exception's text."""
    if isinstance(exc, SecAggAbort):
        return wire.ERROR_ABORTED
    if isinstance(exc, SecAggError):
        return wire.ERROR_REFUSED
    if isinstance(exc, ConfigError):
        return wire.ERROR_CONFIG
    return wire.ERROR_INTERNAL


def coded_errors(message: Message, context: Context, call_next) -> Message:
    """A ClientApp mod: any exception becomes a coded error reply; the round is marked failed on the node."""
    try:
        return call_next(message, context)
    except Exception as exc:  # noqa: BLE001 - every failure is answered the same way
        code = error_code(exc)
        log.warning("refused %s (%s): %s: %s", message.metadata.message_type, wire.ERROR_CODES[code],
                    type(exc).__name__, exc)
        if PENDING in context.state:
            del context.state[PENDING]
        if SECRETS in context.state:  # a refused round stays refused: no retry of a later stage
            context.state[SECRETS] = ConfigRecord({"client_id": context.node_id, "state": "failed"})
        return Message(error=Error(code, wire.ERROR_CODES[code]), reply_to=message)


def build_client_app(mods: tuple = ()) -> ClientApp:
    """A ClientApp with every handler registered (``mods`` wrap them all, e.g. in simulation)."""
    client_app = ClientApp(mods=[coded_errors, *mods])
    client_app.train()(train)
    client_app.train("share_keys")(share_keys)
    client_app.train("masked_input")(masked_input)
    client_app.train("consistency")(consistency)
    client_app.train("unmask")(unmask)
    client_app.evaluate()(evaluate)
    client_app.evaluate("share_keys")(share_keys)
    client_app.evaluate("masked_input")(masked_input)
    client_app.evaluate("consistency")(consistency)
    client_app.evaluate("unmask")(unmask)
    client_app.query()(query)
    client_app.query("share_keys")(share_keys)
    client_app.query("masked_input")(masked_input)
    client_app.query("consistency")(consistency)
    client_app.query("unmask")(unmask)
    return client_app


app = build_client_app()


# ----------------------------------------------------------------------------- helpers


def _array(values: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(values))


def _audit(node: NodeSettings, server_round: int, update: np.ndarray, weight: int) -> None:
    """Tests only: keep the plaintext update on the node's disk, to check nothing like it left."""
    directory = os.environ.get(AUDIT_ENV)
    if directory:
        from pathlib import Path

        import hashlib

        node_name = hashlib.sha256(str(Path(node.state_dir).resolve()).encode()).hexdigest()[:12]
        path = Path(directory) / f"{node_name}-round{server_round}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, update=update, weight=weight)
