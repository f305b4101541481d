"""The platform's Flower ServerApp (Message API): ``flwr run .`` or ``flower-superlink`` deployments.

Reads ``FederationSettings`` from the run config and runs the ``Federation``: rounds of private
local training and SecAgg+ aggregation, federated evaluation, a checkpoint per round and the
exported adapter at the end.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .federation import Federation
from .message_log import MessageLog
from .settings import FederationSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = FederationSettings.from_run_config(dict(context.run_config))
    log_dir = str(settings["message-log"])
    Federation(settings, observe=MessageLog(log_dir) if log_dir else None).start(grid)
