"""End to end: real gunicorn and forwarder processes, real HTTP, the fake HighLevel on loopback.

Each test migrates a fresh store (SQLite file, or a private PostgreSQL schema) with
``flask db upgrade``, starts ``gunicorn`` (2 workers) and ``flask forwarder`` the way the
Procfile does, configured only through the environment, and talks to them with
``requests`` on 127.0.0.1. Process logs go to files under ``tmp_path`` and are printed at
teardown, so a failing test shows them.

Per backend, one stack (process start-up dominates the run time) for delivery,
coalescing, a location parked without a token, and a clean SIGTERM; on PostgreSQL, two
machines (two gunicorn masters) and two forwarders on one store. Killed processes and
outages are in tests/test_reliability.py. The fixtures are in conftest.py (``fake``,
``start_relay``) and the helpers in processes.py.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
import requests

from .conftest import PG_URL
from .processes import (
    ADMIN_KEY,
    HL_TOKEN,
    LOCATION,
    PARKED,
    PARKED_TOKEN,
    WINDOW,
    assert_no_secret_logged,
    attempts,
    count_views,
    free_port,
    json_lines,
    patches_for,
    stop_cleanly,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_delivers_coalesces_parks_and_stops_cleanly(start_relay, fake):
    relay = start_relay()
    summary = relay.store_token(LOCATION)
    assert summary["tokenKind"] == "pit" and summary["status"] == "active"
    assert HL_TOKEN not in json.dumps(summary)
    # Pixel and beacon tokens are credentials: the access log keeps their first characters.
    pixel_token, beacon_token = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
    with relay.session.get(f"{relay.url}/v1/pixel/{pixel_token}.gif", timeout=10) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/gif"
    with relay.session.post(f"{relay.url}/v1/beacon/{beacon_token}", timeout=10) as resp:
        assert resp.status_code == 204

    # A view for a location without a token waits (blocked), and delays no other location.
    parked = relay.post_events({"locationId": PARKED, "invoiceId": "inv_parked"})
    assert parked["status"] == "queued"
    single = relay.post_events({"locationId": LOCATION, "invoiceId": "inv_single",
                                "eventId": "evt-single-1", "source": "e2e"})
    assert single["status"] == "queued"
    batch = relay.post_events({"events": [
        {"locationId": LOCATION, "invoiceId": "inv_batch"},
        {"locationId": LOCATION, "estimateId": "est_batch"},
        *({"locationId": LOCATION, "invoiceId": "inv_multi"} for _ in range(3)),
    ]})["events"]
    assert [e["status"] for e in batch] == ["queued"] * 5
    first_ids = [single["id"], *(e["id"] for e in batch)]
    states = relay.wait_delivered(*first_ids)
    assert all(s["deliveredAt"] for s in states)

    # Two more views of inv_multi inside the window after its first PATCH: one more PATCH,
    # at the end of the window, covers both.
    first_multi = patches_for(fake, "inv_multi")
    assert len(first_multi) == 1  # one PATCH covered the batch's 3 views
    later = [relay.post_events({"locationId": LOCATION, "invoiceId": "inv_multi"})["id"]
             for _ in range(2)]
    assert time.monotonic() - first_multi[0].at < WINDOW, "too slow to test coalescing"
    # A repeated eventId is answered from the first event and sends nothing more.
    again = relay.post_events({"locationId": LOCATION, "invoiceId": "inv_single",
                               "eventId": "evt-single-1"})
    assert again == {"id": single["id"], "status": "duplicate"}

    def is_blocked():
        state = relay.event(parked["id"])
        assert state["status"] == "queued", state
        return state.get("reason") == "blocked"

    wait_for(is_blocked, timeout=10, what="the view without a token to be parked")
    # ...and the operator sees it: a location with views and no token (issue #15).
    status, page = relay.request("GET", f"/v1/locations/{PARKED}", key=ADMIN_KEY)
    assert (status, page["state"], page["waitingViews"]) == (200, "no_token", 1), page
    status, listed = relay.request("GET", "/v1/locations?state=no_token", key=ADMIN_KEY)
    assert [row["locationId"] for row in listed["locations"]] == [PARKED], listed
    assert patches_for(fake, "inv_parked") == []
    relay.store_token(PARKED, PARKED_TOKEN)  # releases the parked view
    relay.wait_delivered(parked["id"], *later)

    multi = patches_for(fake, "inv_multi")
    assert len(multi) == 2, [r.at for r in multi]
    assert multi[1].at - multi[0].at >= WINDOW - 0.3, "second PATCH before the window ended"
    assert [len(patches_for(fake, d)) for d in ("inv_single", "inv_batch", "est_batch",
                                                 "inv_parked")] == [1, 1, 1, 1]
    estimate = patches_for(fake, "est_batch")[0]
    assert (estimate.kind, estimate.json) == ("estimate", {"estimateId": "est_batch"})
    # Each PATCH carried its own location's stored token, and HighLevel accepted it.
    assert all(r.method == "PATCH" and r.status == 200 for r in fake.requests)
    assert [r.token for r in fake.requests if r.document_id != "inv_parked"] == \
        [HL_TOKEN] * (len(fake.requests) - 1)
    assert patches_for(fake, "inv_parked")[0].token == PARKED_TOKEN

    stop_cleanly(relay.web, relay.forwarder)
    assert len(patches_for(fake, "inv_multi")) == 2  # nothing more was sent

    # One JSON line per attempt; the HTTP ones match what HighLevel received.
    logged = attempts(relay.forwarder)
    sent = [r for r in logged if r["outcome"] == "delivered"]
    assert all(r["http_status"] == 200 for r in sent)
    assert sorted(r["document_id"] for r in sent) == \
        sorted(r.document_id for r in fake.requests)
    assert sorted(r["views"] for r in sent if r["document_id"] == "inv_multi") == [2, 3]
    assert [r["outcome"] for r in logged if r["document_id"] == "inv_parked"] == \
        ["no_token", "delivered"]
    assert {r["location_id"] for r in logged} == {LOCATION, PARKED}
    events = [r["event"] for r in json_lines(relay.forwarder.stdout())]
    assert events[0] == "forwarder.started" and events[-1] == "forwarder.stopped"
    assert_no_secret_logged(relay.web, relay.forwarder)
    paths = {r["path"] for r in json_lines(relay.web.stdout()) if r.get("event") == "http.request"}
    assert {f"/v1/pixel/{pixel_token[:8]}\u2026.gif", f"/v1/beacon/{beacon_token[:8]}\u2026"} \
        <= paths, paths
    web_logs = relay.web.stdout() + relay.web.stderr()
    assert pixel_token not in web_logs and beacon_token not in web_logs


@pytest.mark.skipif(not PG_URL, reason="machines share a PostgreSQL store: set TEST_DATABASE_URL")
@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_machines_and_two_forwarders_share_one_store(start_relay, fake, db_url):
    """Two gunicorn masters on two ports (two machines behind a load balancer, 2 workers
    each) and two forwarders on one PostgreSQL store: every view is delivered, views of a
    document coalesce across machines, and no document is PATCHed twice in one window."""
    window = 4  # a little longer than WINDOW: the posts below must fit in one window
    fake.latency = 0.2  # a send takes a while, so the other forwarder claims meanwhile
    a = start_relay(COALESCE_WINDOW_SECONDS=str(window), FORWARD_CONCURRENCY="2")
    a.start_forwarder()
    b = a.start_web(free_port())
    assert a.web.pid != b.web.pid and a.url != b.url
    a.store_token(LOCATION)

    def post(machine, document):  # a thread's own connection, to one machine
        field = "estimateId" if document.startswith("est") else "invoiceId"
        with requests.Session() as session:
            own = dataclasses.replace(machine, session=session)
            return own.post_events({"locationId": LOCATION, field: document})["id"]

    shared = ["inv_shared", "est_shared"]
    solos = [f"inv_solo_{i}" for i in range(12)]
    # Phase 1, from 4 threads at once: each solo document once, alternately to each
    # machine; each shared document 3 times to each machine.
    jobs = [((a, b)[i % 2], doc) for i, doc in enumerate(solos)]
    jobs += [(machine, doc) for doc in shared for machine in (a, b) for _ in range(3)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda job: post(*job), jobs))
    # Phase 2: once a shared document's first PATCH is in, 2 more views per machine,
    # inside the window that PATCH opened: one more PATCH (at its end) covers them all.
    firsts = wait_for(lambda: all(patches_for(fake, d) for d in shared) and
                      [patches_for(fake, d)[0] for d in shared], timeout=15,
                      what="the shared documents' first PATCHes")
    with ThreadPoolExecutor(4) as pool:
        ids += pool.map(lambda job: post(*job),
                        [(m, doc) for doc in shared for m in (a, b) for _ in range(2)])
    assert time.monotonic() - min(r.at for r in firsts) < window, \
        "too slow to test coalescing"

    # The store is shared: either machine answers for any event.
    a.wait_delivered(*ids[::2], timeout=window + 15)
    b.wait_delivered(*ids[1::2], timeout=5)
    count = count_views(db_url, fake, accepted=ids)
    assert (count.stored, count.delivered, count.pending, count.failed) == \
        (len(ids), len(ids), 0, 0)

    for doc in solos:
        assert len(patches_for(fake, doc)) == 1, doc
    for doc in shared:  # first view at once; the 9 later ones in one PATCH, a window later
        sent = patches_for(fake, doc)
        assert len(sent) == 2, (doc, [r.at for r in sent])
    for doc in solos + shared:  # never twice in one window
        times = [r.at for r in patches_for(fake, doc)]
        assert all(t2 - t1 >= window - 0.3 for t1, t2 in pairwise(times)), (doc, times)
    assert all(r.status == 200 and r.token == HL_TOKEN for r in fake.requests)

    stop_cleanly(a.web, b.web, *a.forwarders)
    # Each PATCH was sent by exactly one forwarder, and both forwarders took a share.
    logged = [attempts(f) for f in a.forwarders]
    assert all(logged), [len(log) for log in logged]
    delivered = [r for log in logged for r in log]
    assert {r["outcome"] for r in delivered} == {"delivered"}
    assert sorted(r["document_id"] for r in delivered) == \
        sorted(r.document_id for r in fake.requests)
    for doc in shared:
        assert sum(r["views"] for r in delivered if r["document_id"] == doc) == 10, doc
    # Both machines answered events (each its own master and workers).
    for machine in (a, b):
        answered = [r for r in json_lines(machine.web.stdout())
                    if r.get("event") == "http.request" and r["path"] == "/v1/events"]
        assert answered and {r["status"] for r in answered} == {202}, machine.url
    assert_no_secret_logged(a.web, b.web, *a.forwarders)
