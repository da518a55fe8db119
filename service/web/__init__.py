"""The HTTP face of the service: thin views over the layers below, and what wraps them.

``init_app(app)`` registers everything web: the JSON body parser, request ids, the API's
blueprints (flask-smorest, which also serves ``/openapi.json`` and ``/docs``; among them
the portal script), the beacon's CORS, the OAuth install pages, health and metrics, the
operator console and ``/``, the one JSON error shape, and the WSGI layers in front of
Flask (the pixel's and single events' front doors, then ProxyFix when ``TRUSTED_PROXIES`` is set).
"""

from __future__ import annotations

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix


def init_app(app: Flask) -> None:
    """Register the web's parts on ``app`` (whose services are already built)."""
    from . import (
        bodies,
        console,
        cors,
        deliveries,
        errors,
        events,
        health,
        keys,
        locations,
        oauth,
        pixel_prefixes,
        pixels,
        relay_script,
        sources,
        webhooks,
    )
    from .events_front import IngestFrontDoor
    from .openapi import init_api
    from .pixel_front import PixelFrontDoor

    bodies.init_app(app)
    settings = app.extensions["service"].config
    # Pixel GETs are answered in front of Flask (see pixel_front); inside ProxyFix.
    app.wsgi_app = PixelFrontDoor(app.wsgi_app, app.extensions["service"])
    # So is one valid event posted to /v1/events (see events_front); also inside ProxyFix.
    app.wsgi_app = IngestFrontDoor(app.wsgi_app, app.extensions["service"],
                                   max_body=app.config.get("MAX_CONTENT_LENGTH"))
    if settings["TRUSTED_PROXIES"]:
        n = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)

    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    api = init_api(app)
    for blueprint in (events.bp, locations.bp, pixels.bp, pixel_prefixes.bp, relay_script.bp,
                      deliveries.bp, keys.bp, sources.bp, webhooks.bp):
        api.register_blueprint(blueprint)
    cors.init_app(app)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(health.bp)
    console.init_app(app)
    errors.init_app(app)


def _assign_request_id() -> None:
    from .pixel_front import request_id_for

    g.request_id = request_id_for(request.headers.get("X-Request-ID", ""))


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response
