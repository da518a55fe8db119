"""An operator's webhook receiver on loopback: real HTTP, signatures checked with the
``standardwebhooks`` library's own ``Webhook.verify`` (as a receiver would)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    verified: Any  # the payload Webhook.verify returned, or None when it refused it
    error: str | None  # why it refused it


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object) -> None:
        pass


class WebhookReceiver:
    """Answers 200 unless scripted (``script(500, 500)``); ``delay`` slows each answer."""

    def __init__(self, secret: str, *, path: str = "/hooks/operator"):
        self.webhook = Webhook(secret)
        self.path = path
        self.delay = 0.0
        self.received: list[Received] = []
        self._script: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                   request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="webhook-receiver")

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def script(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        """The next answers, in order: a status, or (status, headers)."""
        with self._lock:
            self._script.extend(a if isinstance(a, tuple) else (a, {}) for a in answers)

    def delivered(self) -> list[dict]:
        """The verified payloads the receiver accepted (2xx), in order."""
        return [r.verified for r in self.received if r.status == 200 and r.verified]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        headers = dict(request.headers)
        verified, error = None, None
        try:
            verified = self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            error = str(exc)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            status, extra = self._script.pop(0) if self._script else (200, {})
            if request.path != self.path or verified is None:
                status = 400
            self.received.append(Received(headers, body, status, verified, error))
        return Response(json.dumps({"ok": status == 200}), status=status, headers=extra,
                        mimetype="application/json")(environ, start_response)
