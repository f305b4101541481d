"""The platform's Flower ServerApp (Message API): ``flower-superlink`` deployments.

Reads ``FederationSettings`` from the run config and runs the ``Federation``: rounds of private
local training and SecAgg+ aggregation, federated evaluation, a checkpoint per round and the
exported adapter at the end; a run that cannot go on fails (Flower records it failed, and
``platform start`` says so). ``flwr run .`` simulations run ``fedinterest.simulations.flower_server``,
which prepares the simulated shops, reports a config it cannot use in one line (``report``), and
calls ``run_federation`` here.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedinterest.common.config import ConfigError

from .federation import Federation
from .message_log import MessageLog
from .settings import FederationSettings

app = ServerApp()


def run_federation(grid: Grid, settings: FederationSettings) -> None:
    """The federation of ``settings`` on the shops of ``grid``, its messages logged if ``message-log`` says where."""
    log_dir = str(settings["message-log"])
    Federation(settings, observe=MessageLog(log_dir) if log_dir else None).start(grid)


def report(exc: ConfigError) -> None:
    """A run config the federation cannot use, as one line in the run's log (no traceback)."""
    log(ERROR, "fedinterest: %s", exc)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, FederationSettings.from_run_config(dict(context.run_config)))
