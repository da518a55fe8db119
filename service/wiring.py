"""The one place the service's objects are assembled, for the web and for the worker.

``build_services(settings)`` makes what every process shares (engine, store, token vault,
API keys, pixel signer, verdicts, email sources, app webhooks, OAuth client); ``create_app``
keeps it in ``app.extensions["service"]`` and views reach it through ``web.deps.services()``.
``build_forwarder(services)`` adds the HighLevel client and the forwarder for
``flask forwarder``, and ``build_sender(services)`` its operator notifications' sender.
No Flask here.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from .clock import utcnow
from .forward.credentials import TokenProvider
from .forward.forwarder import Forwarder
from .forward.notify import NotificationWatch, WebhookSender
from .highlevel.client import HighLevelClient, build_pool, build_session
from .highlevel.oauth import OAuthClient
from .ingest.app_webhooks import WebhookReceiver
from .ingest.pixels import PixelSigner
from .ingest.prefixes import LocationPixels
from .ingest.source_verifiers import Sources
from .ingest.verdicts import Classifier
from .store.apikeys import ApiKeys
from .store.engine import create_engine
from .store.queue import Store
from .store.ratelimit import StoreLimiter
from .store.tokens import TokenVault


@dataclass
class Services:
    """What a process of the service works with (tests replace ``clock``)."""

    config: dict[str, Any]
    engine: Engine
    store: Store
    vault: TokenVault
    pixel_signer: PixelSigner
    location_pixels: LocationPixels  # location prefixes: pixels for templated emails
    classifier: Classifier
    sources: Sources  # the email providers' verifiers (each None until configured)
    keys: ApiKeys  # API keys kept in the store (environment keys are in config)
    app_webhooks: WebhookReceiver | None = None  # None until HIGHLEVEL_WEBHOOK_PUBLIC_KEY
    oauth: OAuthClient | None = None  # None until HIGHLEVEL_CLIENT_ID/SECRET are set
    clock: Callable[[], dt.datetime] = utcnow


def build_services(settings: Mapping[str, Any]) -> Services:
    """Assemble the shared objects from the typed settings (``config.load_config``).

    :raises ConfigError: a configured key (a source's, the app webhooks') is malformed.
    """
    engine = create_engine(settings["DATABASE_URL"])
    limiter = StoreLimiter(engine.dialect.name, burst=settings["RATE_LIMIT_BURST"],
                           daily=settings["RATE_LIMIT_DAILY"])
    return Services(
        config=dict(settings),
        engine=engine,
        # Web processes share commits between concurrent requests (group_commit).
        store=Store(engine, coalesce_window=settings["COALESCE_WINDOW_SECONDS"],
                    lease_seconds=settings["LEASE_SECONDS"], group_commit=True,
                    retain_ip=settings["RETAIN_CLIENT_IP"], limiter=limiter),
        vault=TokenVault(engine, settings["TOKEN_ENCRYPTION_KEYS"]),
        pixel_signer=PixelSigner(settings["PIXEL_SIGNING_KEYS"]),
        location_pixels=LocationPixels(settings["PIXEL_SIGNING_KEYS"], engine),
        classifier=Classifier.load(settings["MACHINE_OPEN_RULES"]),
        sources=Sources.from_config(settings, engine),
        keys=ApiKeys(engine),
        app_webhooks=WebhookReceiver.from_config(settings),
        oauth=_oauth_client(settings),
    )


def _oauth_client(settings: Mapping[str, Any]) -> OAuthClient | None:
    """The OAuth client when the HighLevel app's credentials are configured."""
    if not (settings["HIGHLEVEL_CLIENT_ID"] and settings["HIGHLEVEL_CLIENT_SECRET"]):
        return None
    base = settings["HIGHLEVEL_BASE_URL"]
    return OAuthClient(build_session(4, base), base, client_id=settings["HIGHLEVEL_CLIENT_ID"],
                       client_secret=settings["HIGHLEVEL_CLIENT_SECRET"],
                       version=settings["HIGHLEVEL_API_VERSION"],
                       timeout=(5.0, settings["HIGHLEVEL_TIMEOUT_SECONDS"]))


def build_forwarder(svc: Services, *, stop: threading.Event | None = None,
                    executor: Executor | None = None) -> Forwarder:
    """A forwarder on ``svc``'s store and vault, sending with a real HighLevel client."""
    cfg = svc.config
    concurrency = cfg["FORWARD_CONCURRENCY"]
    client = HighLevelClient(build_pool(concurrency, cfg["HIGHLEVEL_BASE_URL"]),
                             cfg["HIGHLEVEL_BASE_URL"],
                             version=cfg["HIGHLEVEL_API_VERSION"],
                             timeout=(5.0, cfg["HIGHLEVEL_TIMEOUT_SECONDS"]))
    return Forwarder(svc.store, svc.vault, client,
                     executor=executor or ThreadPoolExecutor(concurrency, "send"),
                     concurrency=concurrency, max_age_seconds=cfg["MAX_EVENT_AGE_SECONDS"],
                     log_days=cfg["DELIVERY_LOG_DAYS"], event_days=cfg["EVENT_RETENTION_DAYS"],
                     clock=svc.clock, stop=stop,
                     tokens=TokenProvider(svc.vault, svc.oauth, margin=dt.timedelta(
                         seconds=cfg["TOKEN_REFRESH_MARGIN_SECONDS"])),
                     watch=NotificationWatch(svc.engine, no_token_after=dt.timedelta(
                         minutes=cfg["NO_TOKEN_ALERT_MINUTES"]),
                         keep=dt.timedelta(days=cfg["DELIVERY_LOG_DAYS"])))


def build_sender(svc: Services, *, stop: threading.Event | None = None
                 ) -> WebhookSender | None:
    """The operator notifications' sender, or None when OPERATOR_WEBHOOK_URLS is unset."""
    cfg = svc.config
    if not cfg["OPERATOR_WEBHOOK_URLS"]:
        return None
    return WebhookSender(svc.engine, cfg["OPERATOR_WEBHOOK_URLS"],
                         cfg["OPERATOR_WEBHOOK_SECRET"], clock=svc.clock, stop=stop)
