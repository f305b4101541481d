"""The ClientApp that ``flwr run .`` runs in simulation: the shop's handlers, each node's config from its partition id.

A simulated SuperNode knows only its ``partition-id``; ``simulated_node_config`` maps it to the node
config a real SuperNode would be started with (its ``sim-nodes`` entry, else its shop of ``sim-data``).
Deployed nodes run ``client.app.app`` itself (through ``deploy.node_runner``), which takes its node
config from the merchant's command line alone.
"""

from __future__ import annotations

from flwr.app import Context, Message

from fedinterest.client.app import build_client_app

from .runner import simulated_node_config


def partition_config(message: Message, context: Context, call_next) -> Message:
    """A ClientApp mod: a node with a partition id and no data path gets its simulated node config."""
    config = context.node_config
    if "data-path" not in config and "partition-id" in config:
        config.update(simulated_node_config(dict(context.run_config), int(config["partition-id"])))
    return call_next(message, context)


app = build_client_app(mods=(partition_config,))
