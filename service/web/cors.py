"""CORS for the beacon: which portals' pages may POST ``/v1/beacon/<token>`` from a browser.

``BEACON_ALLOWED_ORIGINS`` is ``*`` (any origin, the default) or a list of origins. An
allowed origin's preflight (``OPTIONS``, answered by Flask for the beacon's route; the view
never runs, so a preflight records nothing) gets ``Access-Control-Allow-Origin``, POST and
``Content-Type``, and a day's ``Access-Control-Max-Age``; its POST gets the same
``Access-Control-Allow-Origin``. No answer ever carries ``Access-Control-Allow-Credentials``:
the script sends no cookies, and the token in the URL is the credential.

CORS alone stops nothing a page sends without asking: ``navigator.sendBeacon(url)`` and a
``fetch`` POST without a body are "simple" requests that reach the relay without a
preflight, whatever the answer's headers. So with a list, a beacon POST whose ``Origin`` is
not in it is still answered 204 but records nothing (``beacon_origin_allowed``). A request
with no ``Origin`` (curl, a server) or ``Origin: null`` (a page whose referrer policy or
sandbox hides its origin) is not a listed origin's nor another's, and is recorded as before.

Written by hand rather than with flask-cors: it is one route, flask-cors would add a
dependency for a few headers, and it would not refuse to record the simple POST above.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request

from .deps import services

logger = logging.getLogger(__name__)

BEACON_ENDPOINTS = frozenset({"pixel.beacon"})
PREFLIGHT_MAX_AGE = 86400  # a day: browsers cap it lower anyway (Chromium: 2 hours)


def allowed_origin(origin: str | None, allowed: list[str]) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for ``origin``, or None to send none."""
    if allowed == ["*"]:
        return "*"
    return origin if origin in allowed else None


def beacon_origin_allowed() -> bool:
    """Whether the current beacon POST may record a view: no ``Origin``, ``null``, or allowed."""
    origin = request.headers.get("Origin")
    allowed = services().config["BEACON_ALLOWED_ORIGINS"]
    if origin in (None, "null") or allowed_origin(origin, allowed):
        return True
    logger.info("beacon.origin_refused", extra={"origin": origin[:200]})
    return False


def add_beacon_cors(response: Response) -> Response:
    """Add the beacon's CORS headers to its answers (POST, and the preflight)."""
    if request.endpoint not in BEACON_ENDPOINTS:
        return response
    allowed = services().config["BEACON_ALLOWED_ORIGINS"]
    if allowed != ["*"]:
        response.vary.add("Origin")  # the answer depends on who asks: caches must know
    value = allowed_origin(request.headers.get("Origin"), allowed)
    if request.method == "OPTIONS":
        response.status_code = 204
        response.set_data(b"")
        del response.headers["Content-Type"]
        if value is not None:
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    if value is not None:
        response.headers["Access-Control-Allow-Origin"] = value
    return response


def init_app(app: Flask) -> None:
    """Answer the beacon's CORS on every process (its preflight is Flask's automatic OPTIONS)."""
    app.after_request(add_beacon_cors)
