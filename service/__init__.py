"""Invoice view relay: tells HighLevel when a customer has viewed an invoice or estimate."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config, logging, store, API, CLI. ``config`` overrides the environment."""
    from . import (
        admin,
        api,
        bodies,
        cli,
        deliveries_api,
        errors,
        health,
        metrics,
        oauth_api,
        pixel_api,
        sources_api,
        webhooks_api,
    )
    from .config import load_config
    from .db import create_engine
    from .deps import Services
    from .logging import configure_logging
    from .openapi import init_api
    from .pixel_front import PixelFrontDoor
    from .pixels import PixelSigner
    from .ratelimit import StoreLimiter
    from .store import Store
    from .tokens import TokenVault
    from .verdicts import Classifier

    app = Flask(__name__, instance_relative_config=True)
    bodies.init_app(app)
    settings = load_config(os.environ, config, instance_path=app.instance_path)
    configure_logging(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    app.config.update(settings)

    engine = create_engine(settings["DATABASE_URL"])
    app.extensions["service"] = Services(
        config=settings,
        engine=engine,
        store=Store(engine, coalesce_window=settings["COALESCE_WINDOW_SECONDS"],
                    lease_seconds=settings["LEASE_SECONDS"], group_commit=True,
                    retain_ip=settings["RETAIN_CLIENT_IP"],
                    limiter=StoreLimiter(engine.dialect.name, burst=settings["RATE_LIMIT_BURST"],
                                         daily=settings["RATE_LIMIT_DAILY"])),
        vault=TokenVault(engine, settings["TOKEN_ENCRYPTION_KEYS"]),
        pixel_signer=PixelSigner(settings["PIXEL_SIGNING_KEYS"]),
        classifier=Classifier.load(settings["MACHINE_OPEN_RULES"]),
        oauth=_oauth_client(settings),
    )
    # Pixel GETs are answered in front of Flask (see pixel_front); inside ProxyFix.
    app.wsgi_app = PixelFrontDoor(app.wsgi_app, app.extensions["service"])
    if settings["TRUSTED_PROXIES"]:
        n = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)

    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    api_ = init_api(app)
    api_.register_blueprint(api.bp)
    api_.register_blueprint(admin.bp)
    api_.register_blueprint(pixel_api.bp)
    api_.register_blueprint(deliveries_api.bp)
    app.register_blueprint(oauth_api.bp)
    api_.register_blueprint(sources_api.bp)
    api_.register_blueprint(webhooks_api.bp)
    app.register_blueprint(health.bp)
    metrics.init_app(app)
    errors.init_app(app)
    cli.init_app(app)
    return app


def _assign_request_id() -> None:
    from .pixel_front import request_id_for

    g.request_id = request_id_for(request.headers.get("X-Request-ID", ""))


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _oauth_client(settings: Mapping[str, Any]):
    """The OAuth client when the HighLevel app's credentials are configured."""
    from .highlevel import build_session
    from .oauth import OAuthClient

    if not (settings["HIGHLEVEL_CLIENT_ID"] and settings["HIGHLEVEL_CLIENT_SECRET"]):
        return None
    base = settings["HIGHLEVEL_BASE_URL"]
    return OAuthClient(build_session(4, base), base, client_id=settings["HIGHLEVEL_CLIENT_ID"],
                       client_secret=settings["HIGHLEVEL_CLIENT_SECRET"],
                       version=settings["HIGHLEVEL_API_VERSION"],
                       timeout=(5.0, settings["HIGHLEVEL_TIMEOUT_SECONDS"]))
