"""The relay with its durable write taken out, for bench/compare.py ``--stubbed-store``.

``service:create_app()`` exactly, except that ``Store.record_views`` answers at once
without writing (each view "queued" with a new id): the front door, the key check,
marshmallow, the JSON and the response are the relay's own. Comparing it with the real
relay and the bare app on the same gunicorn settings splits the relay's cost into the
web path and the durable write. Never a way to run the service: nothing is stored.

    .venv/bin/gunicorn --config config/gunicorn.conf.py "bench.stubbed_store_app:create_app()"
"""

from __future__ import annotations

import uuid

from service import create_app as create_service_app
from service.store.viewrows import Accepted


def create_app():
    app = create_service_app()
    store = app.extensions["service"].store

    def record_views(views, *, now):
        return [Accepted(str(uuid.uuid4()), "queued") for _ in views]

    store.record_views = record_views  # this instance only: the bench's stand-in
    return app
