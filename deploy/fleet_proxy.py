"""The only thing merchants reach: a TLS reverse proxy that passes the SuperLink's Fleet API and nothing else.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (``flwr`` CLI: runs, nodes, node
registration, new runs) and the runtime API (ServerApp) on one port, and its Control API
authenticates no one. ``platform start`` therefore runs ``flower-superlink`` on loopback and this
proxy on the public address::

    python -m deploy.fleet_proxy --listen HOST:PORT --upstream 127.0.0.1:INTERNAL \\
        --certfile server.pem --keyfile server.key --ca ca.pem

It forwards ``POST /v1/fleet/<route>`` for the routes Flower's Fleet router declares
(:data:`FLEET_ROUTES`) with the request's headers unchanged (a SuperNode authenticates each
request with a public key and a signed timestamp in its headers) and the body bounded
(:data:`MAX_BODY`, 413 above it); every other method or path is answered 404 without reaching
the SuperLink. The upstream is verified against the federation's CA; when it cannot be reached
the answer is 502 with no detail.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from pathlib import Path

FLEET_PREFIX = "/v1/fleet/"
#: The Fleet API's routes (``flwr/superlink/routers/fleet/router.py``, Flower 1.42); a test checks them.
FLEET_ROUTES = frozenset({
    "activate-node", "confirm-message-received", "deactivate-node", "get-fab", "get-run", "pull-messages",
    "pull-object", "push-messages", "push-object", "register-node", "send-node-heartbeat", "unregister-node",
})
MAX_BODY = 256 * 1024 * 1024
UPSTREAM_TIMEOUT = 300.0
#: Headers that describe one connection, not the request (RFC 9110 §7.6.1), and those the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})

log = logging.getLogger("fedinterest.fleet_proxy")


def fleet_route(method: str, path: str) -> str | None:
    """The Fleet route a request may reach (its name), or None: only POST to a known route, exactly."""
    if method != "POST" or not path.startswith(FLEET_PREFIX):
        return None
    name = path[len(FLEET_PREFIX):]
    return name if name in FLEET_ROUTES else None


def forwarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers less the hop-by-hop ones (and those ``Connection`` names), in order."""
    named = {token.strip().lower() for name, value in headers if name.lower() == b"connection"
             for token in value.decode("latin-1").split(",")}
    return [(name, value) for name, value in headers
            if name.decode("latin-1").lower() not in HOP_BY_HOP | named]


class FleetProxy:
    """The proxy as an ASGI app, forwarding to ``upstream`` (HOST:PORT; https against ``ca``, or http without).

    Every method and path reaches :meth:`forward`, which answers 404 for anything but a Fleet route.
    """

    def __init__(self, upstream: str, ca: Path | None, max_body: int = MAX_BODY) -> None:
        self.base = f"https://{upstream}" if ca is not None else f"http://{upstream}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca is not None else False
        self.max_body, self.client = max_body, None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            from starlette.requests import Request

            response = await self.forward(Request(scope, receive))
            await response(scope, receive, send)
        else:  # websockets and anything newer: not the Fleet API
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive, send) -> None:
        import httpx

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(verify=self.verify, timeout=UPSTREAM_TIMEOUT, follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def forward(self, request):
        import httpx
        from starlette.requests import ClientDisconnect
        from starlette.responses import PlainTextResponse, Response

        route = fleet_route(request.method, request.url.path)
        if route is None:
            peer = request.client.host if request.client else "?"
            log.warning("refused %s %s from %s", request.method, request.url.path[:200], peer)
            return PlainTextResponse("not found", status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return PlainTextResponse("request body too large", status_code=413)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > self.max_body:
                    return PlainTextResponse("request body too large", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("client disconnected", status_code=400)
        try:
            answer = await self.client.post(f"{self.base}{FLEET_PREFIX}{route}", content=bytes(body),
                                            headers=forwarded_headers(request.headers.raw))
        except httpx.HTTPError as err:
            log.error("the SuperLink did not answer %s: %s", route, type(err).__name__)
            return PlainTextResponse("bad gateway", status_code=502)
        headers = {k: v for k, v in answer.headers.items()
                   if k.lower() not in HOP_BY_HOP | {"content-encoding", "server", "date"}}
        return Response(answer.content, status_code=answer.status_code, headers=headers)


def serve(listen: str, upstream: str, certfile: Path | None, keyfile: Path | None, ca: Path | None) -> None:
    import uvicorn

    from .flower import split_address

    host, port = split_address(listen)
    uvicorn.run(FleetProxy(upstream, ca), host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                log_level="warning", access_log=False, server_header=False, proxy_headers=False)


def _stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process (uvicorn then shuts down) once ``parent_pid`` is no longer its parent."""
    import os
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        log.warning("platform start (pid %s) is gone; the proxy stops", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.fleet_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="the public address merchants reach")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the SuperLink on loopback")
    parser.add_argument("--certfile", type=Path, help="the platform's server.pem (plain HTTP without it)")
    parser.add_argument("--keyfile", type=Path, help="the platform's server.key")
    parser.add_argument("--ca", type=Path, help="the federation's ca.pem, to verify the SuperLink (http without it)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (platform start) is gone")
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("give --certfile and --keyfile together")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    log.info("Fleet API proxy on %s -> %s (%s)", args.listen, args.upstream,
             "TLS" if args.certfile else "INSECURE, no TLS")
    if args.parent_pid is not None:
        _stop_with_parent(args.parent_pid)
    serve(args.listen, args.upstream, args.certfile, args.keyfile, args.ca)
    return 0


if __name__ == "__main__":
    sys.exit(main())
