"""The fake HighLevel served by uvicorn (httptools' C parser, uvloop): for benchmarks.

In a benchmark the fake shares the machine's two cores with the forwarders it measures,
which HighLevel itself never would. Under cheroot (the tests' server, in
``fake_highlevel.py``) it took about as much CPU as the forwarders in bench/ratelimit.py's
drain (1.9-2.8 s a run of 4,000 requests): cheroot parses requests and reads sockets in
Python (``_pyio`` buffers), and a thread per request waits out the latency. Here the
parsing is C and the latency an ``asyncio.sleep``: 0.5-0.9 s a run. The decisions are the
same object's (``FakeHighLevel.receive``: rate limits, scripts, tokens, the contract
check); only the OpenAPI check, which reads werkzeug's request, is not available.

``python -m tests.fake_highlevel --server uvicorn ...`` runs it (``serve``).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

import uvicorn

from .fake_highlevel import FakeHighLevel

KEEP_ALIVE_S = 75  # uvicorn closes idle connections after 5 s by default; HighLevel's edge
# (like most load balancers) keeps them about a minute


def asgi_app(hl: FakeHighLevel):
    """An ASGI app answering as ``hl`` decides."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {name.decode("latin-1").title(): value.decode("latin-1")
                   for name, value in scope["headers"]}
        host, port = scope.get("client") or ("", 0)
        rec, payload, out, delay = hl.receive(scope["method"], scope["path"], headers,
                                              b"".join(chunks), f"{host}:{port}")
        if hl.latency > 0 or delay > 0:
            await asyncio.sleep(hl.latency + delay)
        body = payload.encode() if isinstance(payload, str) else payload or b""
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in out.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        if body:
            raw.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": rec.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        if hl.on_request is not None:
            hl.on_request(rec)

    return app


def serve(hl: FakeHighLevel, host: str, port: int, *,
          listening: Callable[[str], None]) -> None:
    """Serve until SIGINT / SIGTERM; ``listening(url)`` once the port is bound."""
    if hl.validate_openapi:
        raise SystemExit("--server uvicorn cannot check requests against the OpenAPI "
                         "documents: add --no-openapi, or use --server cheroot")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # before ``listening``: a client told the URL is not refused
    hl.url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(asgi_app(hl), loop="uvloop", http="httptools", lifespan="off",
                            log_level="warning", access_log=False, backlog=2048,
                            timeout_keep_alive=KEEP_ALIVE_S)
    listening(hl.url)
    # uvicorn stops on SIGINT / SIGTERM, then raises the signal again for the handler it
    # found: one that returns, so the caller's own ending runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
