"""Serve predictions from an exported adapter over HTTP.

POST /predict takes users' recent events as JSON and returns, per user, the top-5 next
categories and the probability of migrating, the same numbers `fedinterest predict` writes for
the same events. GET /health answers once the model is loaded; GET /metrics is Prometheus
text. Concurrent requests are scored together in batches (--max-batch users, --max-wait-ms).
The request and response shapes are in common/serve.py and the README.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedinterest.common.config import ConfigError

if TYPE_CHECKING:
    from fedinterest.deploy.serve import ServeSettings

NAME = "serve"
HELP = "HTTP endpoint: top-5 next categories and migration probability for posted events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="an export directory (runs/.../federation/export) or its adapter/ folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for the model (default 0: torch's default, one per core)")
    parser.add_argument("--max-batch", type=int, default=64, metavar="N",
                        help="most users scored in one forward pass (default 64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                        help="how long a batch waits for more requests (default 5)")
    parser.add_argument("--max-users", type=int, default=256, metavar="N", help="most users per request (default 256)")
    parser.add_argument("--max-events", type=int, default=2000, metavar="N",
                        help="most events per user (default 2000; the model reads the last history-events)")
    parser.add_argument("--max-body-mb", type=float, default=8.0, metavar="MB",
                        help="largest request body in MiB (default 8)")
    parser.add_argument("--category-names", metavar="CSV",
                        help="category_id,category_name file: words for categories outside the taxonomy "
                             "(pass the file `predict` reads to get its numbers)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="server log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn

    from fedinterest.common.data.load import read_category_names
    from fedinterest.deploy.serve import category_names, create_app

    from fedinterest.deploy.predict import load_predictor

    settings = serve_settings(args)
    extra = read_category_names(Path(args.category_names)) if args.category_names else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.adapter, args.device)
    app = create_app(predictor, category_names(predictor, extra), settings)
    print(f"serving {predictor.export} (backbone {predictor.backbone} on {predictor.device}, "
          f"{predictor.taxonomy.n_classes} classes) at http://{args.host}:{args.port}/predict", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The batching and limit flags, checked."""
    from fedinterest.deploy.serve import Limits, ServeSettings

    if args.threads < 0:
        raise ConfigError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    for flag, value in (("--max-batch", args.max_batch), ("--max-users", args.max_users),
                        ("--max-events", args.max_events)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if not args.max_wait_ms >= 0:
        raise ConfigError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms}")
    if not args.max_body_mb > 0:
        raise ConfigError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    limits = Limits(args.max_users, args.max_events, int(args.max_body_mb * (1 << 20)))
    return ServeSettings(args.max_batch, args.max_wait_ms, limits)
