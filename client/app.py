"""The shop's Flower ClientApp (Message API).

``train`` trains one private round, keeps the update on the node and opens a SecAgg+ round by
advertising keys; the next three ``train.*`` stages share keys, send the masked update and help
unmask. ``evaluate`` scores the global adapter on the shop's test period. Replies hold only what
``common.wire`` declares. Between stages the update and the SecAgg+ secrets live in the node's
own ``context.state``, never in a message.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common import wire
from common.model import flatten
from common.secagg import (
    KeyBroadcast, RoundSetup, SecAggClient, SecAggConfig, SeededRandomness, ShareRelay, UnmaskRequest,
)
from common.settings import RoundConfig, TaskSpec

from .node import NodeSettings, load_shop, load_table

log = logging.getLogger("fedinterest.client")

PENDING = "fedinterest.pending"  # ArrayRecord: this round's plaintext update (node-local)
SECRETS = "fedinterest.secagg"  # ConfigRecord: SecAgg+ client state (node-local)
AUDIT_ENV = "FEDINTEREST_AUDIT_DIR"  # tests only: where a node writes its plaintext updates to compare

def _settings(context: Context) -> NodeSettings:
    config = dict(context.node_config)
    if "data-path" not in config and "partition-id" in config:  # `flwr run` simulation nodes
        from simulations.runner import simulated_node_config

        config.update(simulated_node_config(dict(context.run_config), int(config["partition-id"])))
    return NodeSettings.from_node_config(config)


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


def _terms_metrics(ledger) -> dict:
    """The shop's privacy unit, accountant and δ bucket, once its ledger has fixed them."""
    terms = ledger.terms if ledger is not None else None
    return wire.terms_to_metrics(terms.unit, terms.accountant, terms.delta) if terms is not None else {}


def _reply(message: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=message)


def _save_secagg(context: Context, client: SecAggClient, server_round: int | None = None) -> None:
    """Keep the SecAgg+ client (secrets included) in the node's own state between stages."""
    previous = dict(context.state[SECRETS].items()) if SECRETS in context.state else {}
    state = {k: v for k, v in previous.items() if k.startswith("round.") or k.startswith("config.")}
    if server_round is not None:
        state.update({"round.train": server_round})
        state.update({f"config.{k}": (0 if v is None else v) for k, v in client.config.to_dict().items()})
    state.update(client.to_state())
    context.state[SECRETS] = ConfigRecord(state)


def _restore_secagg(context: Context, stage: str) -> SecAggClient:
    if SECRETS not in context.state:
        raise RuntimeError("no SecAgg+ round in progress on this node")
    state = dict(context.state[SECRETS].items())
    fields = {k[7:]: v for k, v in state.items() if k.startswith("config.")}
    fields["degree"] = fields.get("degree") or None
    randomness = _randomness(_settings(context), int(state["round.train"]), stage)
    return SecAggClient.from_state(SecAggConfig(**fields), state, randomness)


def train(message: Message, context: Context) -> Message:
    """One private local round, then the SecAgg+ key advertisement."""
    started = time.perf_counter()
    node = _settings(context)
    round_config, task = _round(message)
    shop = load_shop(node, round_config, task)
    global_state = wire.adapter_from_record(message.content[wire.GLOBAL])
    outcome = shop.train_round(
        global_state,
        total_rounds=round_config.rounds,
        server_round=round_config.round,
        server_epsilon=round_config.epsilon_cap or None,
        seed=_training_seed(node, round_config.round),
        replayable=node.seed is not None,
    )
    terms = _terms_metrics(shop.ledger)
    if outcome.declined:
        log.warning("declining round %s: %s", round_config.round, outcome.reason)  # stays on the node
        code = wire.DECLINE_BUDGET if outcome.code == "budget" else wire.DECLINE_NO_DATA
        metrics = {"declined": 1, "decline_code": code, **terms}
        if outcome.epsilon is not None:
            metrics["epsilon"] = float(outcome.epsilon)
        return _reply(message, {wire.METRICS: MetricRecord(metrics)})

    update = flatten(outcome.state) - flatten(global_state)
    setup = wire.secagg_from_content(message.content, RoundSetup)
    weight = int(min(outcome.num_examples, setup.config.max_weight))
    client = SecAggClient(context.node_id, setup.config, _randomness(node, round_config.round, "keys"))
    advertisement = client.advertise_keys(setup)
    context.state[PENDING] = ArrayRecord({"update": _array(update), "weight": _array(np.array([weight]))})
    _save_secagg(context, client, round_config.round)
    _audit(node, round_config.round, update, weight)
    metrics = {"declined": 0, "steps": int(outcome.stats.steps), "train_loss": float(outcome.stats.mean_loss),
               "seconds": time.perf_counter() - started, **terms}
    if outcome.epsilon is not None:
        metrics["epsilon"] = float(outcome.epsilon)
    return _reply(message, {**wire.secagg_to_records(advertisement), wire.METRICS: MetricRecord(metrics)})


def query(message: Message, context: Context) -> Message:
    """A federated statistics round: this shop's noised vector (``client.statistics.answer_query``).

    The release is reserved in the shop's ledger first (and declined if over budget); the
    vector then waits on the node for the SecAgg+ stages, exactly like a training update.
    """
    from .ledger import PrivacyLedger
    from .statistics import answer_query

    node = _settings(context)
    setup = wire.secagg_from_content(message.content, RoundSetup)
    _, outcome = answer_query(dict(message.content[wire.TASK].items()), load_table(node), node.privacy,
                              node.state_dir, seed=_training_seed(node, setup.round_id))
    ledger = PrivacyLedger.open(node.state_dir) if node.privacy.private else None
    metrics = {"declined": int(outcome.declined), **_terms_metrics(ledger)}
    if outcome.epsilon is not None:
        metrics["epsilon"] = float(outcome.epsilon)
    if outcome.declined:
        log.warning("declining the statistics round: %s", outcome.reason)  # stays on the node
        return _reply(message, {wire.METRICS: MetricRecord({**metrics, "decline_code": wire.DECLINE_BUDGET})})
    client = SecAggClient(context.node_id, setup.config, _randomness(node, setup.round_id, "keys"))
    advertisement = client.advertise_keys(setup)
    context.state[PENDING] = ArrayRecord({"update": _array(outcome.vector.ravel()), "weight": _array(np.array([1]))})
    _save_secagg(context, client, setup.round_id)
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


def unmask(message: Message, context: Context) -> Message:
    client = _restore_secagg(context, "unmask")
    reply = client.unmask(wire.secagg_from_content(message.content, UnmaskRequest))
    del context.state[SECRETS]
    return _reply(message, wire.secagg_to_records(reply))


def evaluate(message: Message, context: Context) -> Message:
    """Metrics of the global adapter on this shop's test period (aggregate scalars only)."""
    node = _settings(context)
    round_config, task = _round(message)
    shop = load_shop(node, round_config, task)
    shop.load_adapter(wire.adapter_from_record(message.content[wire.GLOBAL]))
    metrics = shop.evaluate(round_config.eval_examples or None)
    clean = {k: float(v) for k, v in metrics.items() if k in wire.EVALUATE_METRICS and np.isfinite(v)}
    return _reply(message, {wire.METRICS: MetricRecord(clean)})


# ----------------------------------------------------------------------------- the app


def build_client_app(mods: tuple = ()) -> ClientApp:
    """A ClientApp with every handler registered (``mods`` wrap them all, e.g. in simulation)."""
    client_app = ClientApp(mods=list(mods))
    client_app.train()(train)
    client_app.train("share_keys")(share_keys)
    client_app.train("masked_input")(masked_input)
    client_app.train("unmask")(unmask)
    client_app.evaluate()(evaluate)
    client_app.query()(query)
    client_app.query("share_keys")(share_keys)
    client_app.query("masked_input")(masked_input)
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
