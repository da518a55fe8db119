"""Operator notifications, sent: Standard Webhooks-signed POSTs to OPERATOR_WEBHOOK_URLS.

``NotificationWatch.tick(now=...)`` is the forwarder loop's periodic part (``forward_once``
calls it): once a minute it tells operators about views parked without a token for longer
than NO_TOKEN_ALERT_MINUTES (``outbox.alert_no_token``), and once an hour it prunes
notifications older than the delivery log. It runs whether or not URLs are set.

``WebhookSender`` posts what the outbox holds (a thread of the forwarder process, ``run``;
tests call ``send_due(now=...)``). It fans each new notification out to every configured
URL, leases the due deliveries (several forwarders never post one twice at once), signs
each POST with the ``standardwebhooks`` library (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), and retries a failure with exponential backoff and full jitter (the
forwarder's ``retry_delay``) until the notification is ``MAX_AGE`` old. Every attempt is
recorded in the store, logged (``notify.attempt``: the URL's host, never its path, which
can hold a secret) and counted (``relay_operator_webhooks_total``). No Flask here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import requests
from standardwebhooks import Webhook

from ..clock import utcnow
from ..metrics import observe_operator_webhook
from ..store import notifications as deliveries
from ..store.notifications import Attempt, Delivery, destination_key
from ..store.outbox import alert_no_token
from .forwarder import retry_delay

logger = logging.getLogger(__name__)

MAX_AGE = dt.timedelta(days=1)  # a notification not delivered by then is given up
TIMEOUT = (3.0, 5.0)  # connect, read: a receiver is told, not waited for
BATCH = 10
CHECK_EVERY = dt.timedelta(minutes=1)
PRUNE_EVERY = dt.timedelta(hours=1)


class NotificationWatch:
    """The forwarder's periodic notification work: parked views, then pruning."""

    def __init__(self, engine, *, no_token_after: dt.timedelta = dt.timedelta(minutes=60),
                 keep: dt.timedelta = dt.timedelta(days=30)):
        self.engine = engine
        self.no_token_after = no_token_after
        self.keep = keep
        self._last_check: dt.datetime | None = None
        self._last_prune: dt.datetime | None = None

    def tick(self, *, now: dt.datetime) -> None:
        """Do what is due: the no-token check each minute, pruning each hour."""
        if self._last_check is None or now - self._last_check >= CHECK_EVERY:
            self._last_check = now
            for location_id in alert_no_token(self.engine, now=now, after=self.no_token_after):
                logger.warning("notify.no_token", extra={"location_id": location_id})
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            pruned = deliveries.prune(self.engine, older_than=now - self.keep)
            if pruned:
                logger.info("notifications.pruned", extra={"rows": pruned})


def host_of(url: str) -> str:
    """``https://hooks.example.com:8443``: a URL without its path, query or credentials."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def retry_after(resp: requests.Response) -> float | None:
    """A receiver's ``Retry-After`` in seconds (the number form only)."""
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


class WebhookSender:
    """Posts operator notifications to each URL, signed, retried, recorded."""

    def __init__(self, engine, urls: Sequence[str], secret: str, *,
                 session: requests.Session | None = None,
                 timeout: tuple[float, float] = TIMEOUT, batch: int = BATCH,
                 max_age: dt.timedelta = MAX_AGE,
                 clock: Callable[[], dt.datetime] = utcnow,
                 rand: Callable[[], float] = random.random,
                 stop: threading.Event | None = None):
        self.engine = engine
        self.urls = {destination_key(url): url for url in urls}
        self.hosts = {key: host_of(url) for key, url in self.urls.items()}
        self.webhook = Webhook(secret)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "invoice-view-relay/1.0 (operator notifications)"
        self.session = session
        self.timeout = timeout
        self.batch = batch
        # Posts are one after another: the lease covers a whole batch of slow receivers.
        self.lease = dt.timedelta(seconds=batch * sum(timeout) + 30)
        self.max_age = max_age
        self.clock = clock
        self.rand = rand
        self.stop = stop or threading.Event()

    def send_due(self, *, now: dt.datetime | None = None) -> int:
        """Fan out new notifications, post the due deliveries, record each; return how many
        were attempted."""
        now = now or self.clock()
        deliveries.fan_out(self.engine, self.hosts, now=now, max_age=self.max_age)
        claimed = deliveries.claim(self.engine, now=now, limit=self.batch, lease=self.lease)
        results = []
        for delivery in claimed:
            if self.stop.is_set():
                break  # shutting down: the rest come due again when their lease ends
            results.append((delivery, self.attempt(delivery)))
        if results:
            deliveries.record(self.engine, results, now=self.clock())
        for delivery, attempt in results:
            observe_operator_webhook(delivery.type, attempt.outcome)
            level = logging.INFO if attempt.outcome == "delivered" else logging.WARNING
            logger.log(level, "notify.attempt", extra={
                "type": delivery.type, "location_id": delivery.location_id,
                "message_id": delivery.message_id, "host": delivery.host,
                "attempt": delivery.attempts + 1, "outcome": attempt.outcome,
                "http_status": attempt.http_status, "error": attempt.error,
                "latency_ms": attempt.latency_ms})
        return len(results)

    def attempt(self, delivery: Delivery) -> Attempt:
        """POST one delivery, signed now; say what happens to it next."""
        url = self.urls.get(delivery.destination)
        if url is None:
            return Attempt("failed", error="destination no longer in OPERATOR_WEBHOOK_URLS")
        signed_at = self.clock()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(math.floor(signed_at.timestamp())),
            "webhook-signature": self.webhook.sign(delivery.message_id, signed_at,
                                                   delivery.payload),
        }
        started = time.monotonic()
        status, error, wait = None, None, None
        try:
            with self.session.post(url, data=delivery.payload.encode(), headers=headers,
                                   timeout=self.timeout, allow_redirects=False) as resp:
                status, wait = resp.status_code, retry_after(resp)
        except requests.RequestException as exc:
            error = type(exc).__name__  # its text quotes the URL, which may hold a secret
        latency_ms = round((time.monotonic() - started) * 1000)
        if status is not None and 200 <= status < 300:
            return Attempt("delivered", http_status=status, latency_ms=latency_ms)
        error = error or f"HTTP {status}"
        now = self.clock()
        if now - delivery.created_at >= self.max_age:
            return Attempt("failed", http_status=status, error=error, latency_ms=latency_ms)
        delay = retry_delay(delivery.attempts, rand=self.rand, retry_after=wait)
        return Attempt("retry", http_status=status, error=error, latency_ms=latency_ms,
                       next_attempt_at=now + dt.timedelta(seconds=delay))


def run(sender: WebhookSender, *, idle: float = 1.0) -> int:
    """Send until ``sender.stop`` is set, pausing ``idle`` seconds when nothing is due;
    return how many attempts were made. An unexpected error is logged and the loop goes on."""
    total = 0
    while not sender.stop.is_set():
        try:
            count = sender.send_due()
        except Exception:
            logger.exception("notify.error")
            count = 0
        total += count
        if not count:
            sender.stop.wait(idle)
    return total
