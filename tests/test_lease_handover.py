"""Leases follow their holder, with real processes: a live forwarder keeps its documents
however slow HighLevel is; a forwarder killed mid-batch hands them over in seconds.

As in test_reliability.py: gunicorn and ``flask forwarder`` processes, a real store
(SQLite file, or PostgreSQL with ``TEST_DATABASE_URL``), the fake HighLevel over HTTP,
which records every request. Its latency (8 s) is longer than the lease (3 s here), so
only renewals keep an idle forwarder from taking a live one's documents. The clock-driven
unit tests are in test_leases.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from .processes import (
    INGEST_KEY,
    LOCATION,
    assert_no_secret_logged,
    attempts,
    count_views,
    stop_cleanly,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

LEASE = 3  # LEASE_SECONDS: renewed every second
LATENCY = 8.0  # each PATCH is received at once and answered this much later
DELIVERED_WITHIN = 30.0  # issue 17: everything delivered within 30 s of the kill


def events(prefix: str, count: int) -> dict:
    return {"events": [{"locationId": LOCATION, "invoiceId": f"{prefix}{i}"}
                       for i in range(count)]}


def test_a_killed_forwarders_batch_is_sent_again_in_seconds_and_nothing_else_twice(
        start_relay, fake, db_url):
    fake.latency = LATENCY
    relay = start_relay(LEASE_SECONDS=str(LEASE))
    relay.store_token(LOCATION)
    first = relay.forwarder

    # The first forwarder takes a whole batch (the only one running), and sends it.
    batch = [e["id"] for e in relay.post_events(events("inv_a", 16))["events"]]
    wait_for(lambda: len(fake.requests) == 16, timeout=15, what="the first batch's PATCHes")
    sent_at = min(r.at for r in fake.requests)

    # A second forwarder polls, idle, past the end of the first one's original leases:
    # renewed, they are not its to take.
    second = relay.start_forwarder()
    wait_for(lambda: "forwarder.started" in second.stdout(), timeout=20,
             what="the second forwarder to start")
    polling_since = time.monotonic()
    wait_for(lambda: time.monotonic() >= max(sent_at + LEASE + 2, polling_since + 1.5),
             timeout=LATENCY, interval=0.05, what="the first leases' original end")
    assert len(fake.requests) == 16, "a live forwarder's documents were sent again"

    os.kill(first.pid, signal.SIGKILL)  # mid-batch: HighLevel has answered nothing yet
    killed_at = time.monotonic()
    assert first.wait(10) == -signal.SIGKILL
    assert killed_at - sent_at < LATENCY, "killed too late: HighLevel had already answered"
    assert attempts(first) == []  # it never learned an outcome: all 16 were in flight

    # New views arrive after the kill: the survivor sends them, then the dead one's batch.
    later = [e["id"] for e in relay.post_events(events("inv_b", 8))["events"]]
    count = wait_for(lambda: (c := count_views(db_url, fake, accepted=batch + later)).pending
                     == 0 and c, timeout=DELIVERED_WITHIN, interval=0.3,
                     what="every view delivered after the kill")
    print(f"kill -> all delivered: {time.monotonic() - killed_at:.1f} s "
          f"(lease {LEASE} s, HighLevel latency {LATENCY:g} s)")
    assert (count.stored, count.delivered, count.failed) == (24, 24, 0)

    patches = Counter(r.document_id for r in fake.requests if r.method == "PATCH")
    before_kill = Counter(r.document_id for r in fake.requests if r.at < killed_at)
    in_flight = {f"inv_a{i}" for i in range(16)}
    assert before_kill == Counter(in_flight)  # once each while their holder lived
    # Sent twice: exactly the sends in flight at the kill; every other document once.
    assert {d for d, n in patches.items() if n == 2} == in_flight
    assert {d: n for d, n in patches.items() if d not in in_flight} == {
        f"inv_b{i}": 1 for i in range(8)}
    logged = attempts(second)
    assert sorted(r["document_id"] for r in logged) == sorted(patches)
    assert {(r["outcome"], r["lease_kept"]) for r in logged} == {("delivered", True)}

    stop_cleanly(second, relay.web)
    assert_no_secret_logged(relay.web, first, second)
    assert INGEST_KEY not in second.stdout()
