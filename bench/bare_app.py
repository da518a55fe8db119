"""The baseline for bench/pixel.py: a bare Flask app serving the relay's pixel, and nothing else
(and, for bench/compare.py, a ``POST /v1/events`` that validates and stores nothing: 202).

Same 43-byte GIF and the same response headers (imported from ``service.ingest.pixels``, so they
cannot drift), the same URL shape (``GET|HEAD /v1/pixel/<anything>``), no store, no
signature check, no classifier, no request id, no flask-smorest. ``/readyz`` answers 200
so the benchmark's readiness wait works unchanged.

Run it with the relay's own gunicorn settings (same workers, threads, logging, access
log)::

    WEB_CONCURRENCY=4 GUNICORN_THREADS=4 PORT=8001 HOST=127.0.0.1 \\
        .venv/bin/gunicorn --config config/gunicorn.conf.py "bench.bare_app:create_app()"

(``bench`` has no ``__init__.py``; from the project root it imports as a namespace
package.)
"""

from __future__ import annotations

from flask import Flask, Response, request

from service.ingest.pixels import GIF, GIF_HEADERS


def create_app() -> Flask:
    app = Flask(__name__)

    @app.route("/v1/pixel/<path:rest>", methods=["GET", "HEAD"])
    def pixel(rest: str):
        return Response(GIF, status=200, headers=GIF_HEADERS)

    @app.post("/v1/events")
    def events():  # bench/compare.py's baseline for ingest: reads the body, checks nothing
        request.get_data()
        return {"id": "bare", "status": "queued"}, 202

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app
