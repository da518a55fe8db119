"""The ingest front door: a single valid event ``POST /v1/events`` answered in front of Flask.

One event per request is the API's common case, and Flask's request context, routing,
flask-smorest's webargs parsing (a schema built per request) and response dumping, the
session and the app's hooks cost about as much CPU as storing the view
(bench/results-ingest-front.md has the profile). Like the pixel's front door
(``pixel_front``), this WSGI middleware takes the one request that is all success: a JSON
body of one event, a bearer key that may post it, a store that takes it. It does what the
view does, in the same order: the key (environment keys in memory first, then stored keys
through their cache: ``auth.grant_for``), the body parsed once (``safejson``), validated by
the same marshmallow schema (``EventSchema``, one instance for the process), the
location checked against the key, the view built (``events.event_view``) and committed
through the store's group commit before the 202, the metrics, the same JSON and headers.

Anything else is handed to Flask unchanged (the body given back), which answers it as
before: a batch, a missing or refused key, a body that is not JSON or not valid, a key
limited to other locations, an ``eventId`` used for another document (409: nothing was
stored, so Flask meets the same conflict). A store failure is not written again: Flask
gets the request with the error (``events.STORE_ERROR``) and answers it in the app's
error shape. The OpenAPI document is Flask's route, unchanged.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable

import marshmallow as ma

from .. import safejson
from ..metrics import observe_ingest
from ..store.viewrows import IdempotencyConflict
from .auth import grant_for
from .events import STORE_ERROR, event_view
from .pixel_front import request_id_for
from .schemas import EventSchema

PATH = "/v1/events"
SCOPE = "events:write"


def _json_type(content_type: str) -> bool:
    """Whether a Content-Type is JSON as Flask's ``request.is_json`` reads it."""
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


class IngestFrontDoor:
    """WSGI middleware: one valid event posted is stored and answered here; every other
    request is passed on to ``wsgi_app``."""

    def __init__(self, wsgi_app: Callable, svc, *, max_body: int | None):
        self.wsgi_app = wsgi_app
        self.svc = svc
        self.max_body = max_body
        self.schema = EventSchema()  # loading keeps no state on the instance

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != PATH
                or not _json_type(environ.get("CONTENT_TYPE", ""))):
            return self.wsgi_app(environ, start_response)
        grant = self._grant(environ.get("HTTP_AUTHORIZATION", ""))
        length = environ.get("CONTENT_LENGTH", "")
        if grant is None or not length.isdigit() or (
                self.max_body is not None and int(length) > self.max_body):
            return self.wsgi_app(environ, start_response)  # 401/403, 413, chunked
        body = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(body)  # whoever reads it next reads it whole
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        environ["HTTP_X_REQUEST_ID"] = request_id  # Flask, if it answers, uses the same
        event = self._event(body)
        if event is None or not grant.may_write(event["locationId"]):
            return self.wsgi_app(environ, start_response)
        svc = self.svc
        now = svc.clock()
        try:
            view = event_view(svc, event, now=now, request_id=request_id)
        except Exception:  # nothing stored yet: Flask meets it again, answers in its shape
            return self.wsgi_app(environ, start_response)
        try:
            [accepted] = svc.store.record_views([view], now=now)
        except IdempotencyConflict:  # nothing stored: Flask finds it again, answers 409
            return self.wsgi_app(environ, start_response)
        except Exception as exc:  # not written again: Flask answers with the error
            environ[STORE_ERROR] = exc
            return self.wsgi_app(environ, start_response)
        observe_ingest([view], [accepted], source="api")
        out = json.dumps({"id": accepted.id, "status": accepted.status},
                         separators=(",", ":")).encode() + b"\n"  # as Flask's jsonify
        start_response("202 ACCEPTED", [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(out))),
                                        ("X-Request-ID", request_id)])
        return [out]

    def _grant(self, authorization: str):
        """The grant of a bearer key holding ``events:write``, else None (Flask answers)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        grant = grant_for(token, self.svc)
        return grant if grant is not None and grant.has(SCOPE) else None

    def _event(self, body: bytes) -> dict | None:
        """The one event ``body`` holds, loaded by ``EventSchema``; None for anything else
        (not JSON, a batch, not valid), which Flask answers."""
        try:
            data = safejson.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or "events" in data:
            return None
        try:
            return self.schema.load(data)
        except ma.ValidationError:
            return None
