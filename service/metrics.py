"""Prometheus metrics: the relay's counters and histograms, and their exposition.

The metric objects are module-level (prometheus_client's idiom); the domain code calls
one helper per event (``observe_ingest``, ``observe_outcomes``, ``observe_refresh``,
``observe_lease``, ``observe_operator_webhook``).
Under gunicorn every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(``config/gunicorn.conf.py`` makes one) and ``GET /metrics`` merges them, so whichever
worker answers reports the totals. The queue depth is read from the store at scrape time.
A forwarder keeps its own metrics: in the same directory when the variable is set for it
too (one machine), or served on ``FORWARDER_METRICS_PORT`` (see ``serve``).

No Flask here: the forwarder imports this module (``GET /metrics`` is served by
``web.health``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from .store.documents import BLOCKED, DEAD, IDLE, PENDING

if TYPE_CHECKING:
    from .store.queue import Accepted, Claim, Outcome, Store, View

logger = logging.getLogger(__name__)

QUEUE_STATUSES = (PENDING, IDLE, BLOCKED, DEAD)  # reported even when zero

EVENTS = Counter(
    "relay_events_received", "Views received, by source, verdict and status "
    "(queued, filtered: not sent by MACHINE_OPENS, duplicate: a repeated eventId)",
    ["source", "verdict", "status"])
COALESCED = Counter(
    "relay_views_coalesced", "Views that joined views of the same document already waiting "
    "to be sent (one PATCH covers them all)")
REPEATS = Counter(
    "relay_views_repeated", "Views a client repeated within the coalescing window, counted "
    "on the row it stored for that document (events.views) rather than stored again")
SENDS = Counter(
    "relay_sends", "Delivery attempts (one delivery.attempt log line each), by outcome and "
    "HighLevel's HTTP status (none: no answer, or parked without sending)",
    ["outcome", "http_status"])
RETRIES = Counter(
    "relay_retries", "Attempts whose document comes due again, by reason "
    "(retry: 5xx and the like, rate_limited, network_error, unauthorized)", ["reason"])
RATE_LIMITED = Counter("relay_rate_limited", "429 answers from HighLevel")
SEND_LATENCY = Histogram(
    "relay_send_latency_seconds", "Time HighLevel took to answer a PATCH",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
VIEW_TO_DELIVERY = Histogram(
    "relay_view_to_delivery_seconds", "From the oldest view a delivered PATCH covered being "
    "received to HighLevel accepting it (coalescing, retries and parking included)",
    buckets=(0.25, 0.5, 1, 2.5, 5, 15, 30, 60, 120, 300, 900, 3600, 21600, 86400))
REFRESHES = Counter("relay_token_refreshes", "OAuth token refreshes, by result (ok, failed)",
                    ["result"])
LEASES = Counter(
    "relay_leases", "A forwarder's leases: renewal rounds (renewed, renew_failed), documents "
    "given up unsent (given_up: the lease was ending or taken) and outcomes dropped "
    "(outcome_dropped: recorded after another forwarder took the lease)", ["event"])
OPERATOR_WEBHOOKS = Counter(
    "relay_operator_webhooks", "Operator notification POSTs (OPERATOR_WEBHOOK_URLS), by type "
    "and outcome (delivered; retry: to be tried again; failed: given up)", ["type", "outcome"])


# -- what the domain code calls (one line each) ------------------------------------------

_EVENT_CHILDREN: dict[tuple[str, str, str], Any] = {}  # EVENTS' labelled children

def observe_ingest(views: Sequence[View], accepted: Sequence[Accepted], *, source: str) -> None:
    """Count views just recorded through one ingest route (``source``: api, pixel, ...)."""
    for view, answer in zip(views, accepted, strict=True):
        key = (source, view.verdict, answer.status)
        child = _EVENT_CHILDREN.get(key)
        if child is None:  # labels() validates and locks on every call: once per key
            child = _EVENT_CHILDREN.setdefault(key, EVENTS.labels(*key))
        child.inc()
        if answer.coalesced:
            COALESCED.inc()
        if answer.repeat:
            REPEATS.inc()


_SEND_CHILDREN: dict[tuple[str, int | None], Any] = {}  # SENDS' labelled children
_RETRY_CHILDREN: dict[str, Any] = {}  # RETRIES' labelled children


def observe_outcomes(results: Iterable[tuple[Claim, Outcome]], *, now: dt.datetime) -> None:
    """Count recorded delivery attempts: outcomes, retries, 429s, latencies."""
    for claim, outcome in results:
        status = outcome.http_status
        key = (outcome.outcome, status)
        child = _SEND_CHILDREN.get(key)
        if child is None:  # labels() validates and locks on every call: once per key
            child = _SEND_CHILDREN.setdefault(key, SENDS.labels(
                outcome.outcome, "none" if status is None else str(status)))
        child.inc()
        if outcome.result == "retry":
            child = _RETRY_CHILDREN.get(outcome.outcome)
            if child is None:
                child = _RETRY_CHILDREN.setdefault(outcome.outcome,
                                                   RETRIES.labels(outcome.outcome))
            child.inc()
        if status == 429:
            RATE_LIMITED.inc()
        if outcome.latency_ms is not None:
            SEND_LATENCY.observe(outcome.latency_ms / 1000)
        if outcome.result == "delivered":
            VIEW_TO_DELIVERY.observe(max((now - claim.pending_since).total_seconds(), 0.0))


def observe_refresh(ok: bool) -> None:
    """Count one OAuth token refresh."""
    REFRESHES.labels("ok" if ok else "failed").inc()


def observe_lease(event: str, count: int = 1) -> None:
    """Count ``count`` lease events (``LEASES``' labels) of a forwarder."""
    if count:
        LEASES.labels(event).inc(count)


def observe_operator_webhook(type_: str, outcome: str) -> None:
    """Count one operator notification POST (or a delivery given up without one)."""
    OPERATOR_WEBHOOKS.labels(type_, outcome).inc()


# -- exposition ---------------------------------------------------------------------------

class QueueCollector:
    """The queue depth by status, read from the store when scraped (right in any process).

    A store that cannot be reached does not fail the scrape: ``relay_store_up`` says 0.
    """

    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        up = GaugeMetricFamily("relay_store_up", "1 if the store answered this scrape")
        try:
            counts = self.store.queue_depth()
        except Exception as exc:  # any failure to reach the store: report it, keep serving
            logger.warning("metrics.store_unreachable", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        depth = GaugeMetricFamily("relay_queue_depth", "Documents in the queue by status",
                                  labels=["status"])
        for status in dict.fromkeys((*QUEUE_STATUSES, *counts)):
            depth.add_metric([status], counts.get(status, 0))
        up.add_metric([], 1)
        yield depth
        yield up


class _Scrape:
    """What one scrape reads: the process's (or every worker's) metrics, then the queue."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def multiprocess() -> bool:
    """Whether values live in ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn workers).

    prometheus_client's own switch, read by it on import (so not part of the app's config).
    """
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(queue: QueueCollector | None = None, *, accept: str | None = None
               ) -> tuple[bytes, str]:
    """A scrape's body and content type (the format ``accept`` asks for, as
    prometheus_client's own server picks it): every worker's values in multiprocess mode."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # merges every process's files, dead workers' too
    else:
        registry = REGISTRY
    encode, content_type = choose_encoder(accept or "")
    return encode(_Scrape(registry, queue) if queue else registry), content_type


def serve(address: tuple[str, int]) -> Callable[[], None]:
    """Serve this process's metrics at ``http://host:port/`` (a forwarder); return a stop."""
    server, thread = start_http_server(address[1], addr=address[0])

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
