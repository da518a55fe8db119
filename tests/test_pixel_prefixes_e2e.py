"""Location pixels end to end: real gunicorn (2 workers, the pixel's front door) and a
forwarder, the fake HighLevel on loopback. A minted prefix's URL with a document id filled
in reaches HighLevel as that document's PATCH; after a revocation every worker stops
recording within seconds (no restart); the prefix never reaches a log."""

from __future__ import annotations

import itertools

import pytest
import requests
import sqlalchemy as sa

from service.store.db import events
from service.store.engine import create_engine

from .processes import ADMIN_KEY, LOCATION, assert_no_secret_logged, patches_for, wait_for
from .test_pixel import CHROME

pytestmark = pytest.mark.e2e


def stored(engine, document_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.document_id == document_id)).scalar()


def test_location_pixel_through_gunicorn(start_relay, fake, db_url):
    relay = start_relay()
    relay.store_token(LOCATION)
    status, minted = relay.request("POST", f"/v1/locations/{LOCATION}/pixel-prefixes",
                                   key=ADMIN_KEY, body={"kind": "invoice"})
    assert status == 201, minted
    template = minted["urlTemplate"]
    assert template.startswith(f"{relay.url}/v1/pixel/l/")
    prefix = template.removeprefix(f"{relay.url}/v1/pixel/l/").split("/")[0]

    def open_pixel(document_id: str) -> None:
        # A new connection each time, so each of gunicorn's workers gets some of them (a
        # kept-alive connection stays with one worker).
        with requests.get(template.replace("{documentId}", document_id), timeout=10,
                          headers={"User-Agent": CHROME, "Connection": "close"}) as resp:
            assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/gif"
            assert len(resp.content) == 43

    open_pixel("INV-123")
    wait_for(lambda: patches_for(fake, "INV-123"), timeout=20,
             what="the location pixel's view to reach HighLevel")
    [patch] = patches_for(fake, "INV-123")
    assert (patch.kind, patch.json) == ("invoice", {"invoiceId": "INV-123"})

    status, _ = relay.request("DELETE", f"/v1/locations/{LOCATION}/pixel-prefixes/"
                              f"{minted['id']}", key=ADMIN_KEY)
    assert status == 204
    engine = create_engine(db_url)
    try:
        # Each worker may trust what it last read for RECHECK (2 s): open new documents,
        # a few at a time, until none of a batch records (each view is stored before its
        # GIF is answered)...
        fresh = (f"INV-after-{n}" for n in itertools.count())

        def revoked_everywhere() -> bool:
            opened = list(itertools.islice(fresh, 6))
            for document_id in opened:
                open_pixel(document_id)
            return not any(stored(engine, d) for d in opened)

        wait_for(revoked_everywhere, timeout=10, interval=0.2,
                 what="the revocation to reach every worker")
        # ...then no worker records any more.
        for document_id in itertools.islice(fresh, 10):
            open_pixel(document_id)
            assert stored(engine, document_id) == 0, document_id
    finally:
        engine.dispose()

    assert_no_secret_logged(relay.web, relay.forwarder)
    logs = relay.web.stdout() + relay.web.stderr()
    assert prefix not in logs and prefix.rpartition(".")[2] not in logs
