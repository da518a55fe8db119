"""The simplest alternative to the relay, for bench/inline.py: call HighLevel inline.

What a user would write first: a Flask ``POST /v1/events`` that takes the same event body,
looks up the location's token and PATCHes HighLevel before answering, with ``requests``:
200 if HighLevel said 2xx, 502 otherwise (HighLevel down, slow past the timeout, 429). No
store, no queue, no retry: an event HighLevel did not take is lost unless the caller
retries. It is given the benefit of the doubt: one pooled ``requests.Session`` per worker
(keep-alive to HighLevel), a timeout on every call, the same headers as the relay
(``Version``, ``Authorization: Bearer <token>``, JSON body).

Settings (environment): ``HIGHLEVEL_BASE_URL``, ``INGEST_API_KEYS`` (the same key check as
the relay), ``INLINE_TOKENS`` (a JSON object, locationId -> token), ``GUNICORN_THREADS``
(sizes the connection pool). Run with the relay's own gunicorn settings::

    .venv/bin/gunicorn --config config/gunicorn.conf.py "bench.inline_app:create_app()"
"""

from __future__ import annotations

import json
import os

import requests
from flask import Flask, request
from requests.adapters import HTTPAdapter

API_VERSION = "2021-07-28"
PATHS = {"invoiceId": "/invoices/stats/last-visited-at",
         "estimateId": "/invoices/estimate/stats/last-visited-at"}


def create_app() -> Flask:
    app = Flask(__name__)
    base_url = os.environ["HIGHLEVEL_BASE_URL"].rstrip("/")
    keys = {k.strip() for k in os.environ["INGEST_API_KEYS"].split(",") if k.strip()}
    tokens = json.loads(os.environ.get("INLINE_TOKENS", "{}"))
    session = requests.Session()
    pool = int(os.environ.get("GUNICORN_THREADS", "8"))
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))

    @app.post("/v1/events")
    def events():
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:].strip() not in keys:
            return {"statusCode": 401, "message": "Invalid ingest key"}, 401
        event = request.get_json(silent=True) or {}
        field = next((f for f in PATHS if f in event), None)
        token = tokens.get(event.get("locationId"))
        if field is None or token is None:
            return {"statusCode": 422, "message": "Unknown location or no document id"}, 422
        try:
            resp = session.patch(base_url + PATHS[field], json={field: event[field]},
                                 headers={"Authorization": f"Bearer {token}",
                                          "Version": API_VERSION},
                                 timeout=(5, 10))
        except requests.RequestException as exc:
            app.logger.warning("inline.highlevel_failed", extra={"error": repr(exc)[:300]})
            return {"statusCode": 502, "message": f"HighLevel: {type(exc).__name__}"}, 502
        if 200 <= resp.status_code < 300:
            return {"status": "delivered"}, 200
        return {"statusCode": 502, "message": f"HighLevel answered {resp.status_code}"}, 502

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app
