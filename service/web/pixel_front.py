"""The pixel's front door: ``GET /v1/pixel/...`` answered in front of Flask.

The pixel is the hottest path of the service (one request per opened email) and the
simplest: whatever comes in, the same GIF goes out. Going through Flask's request
context, routing, flask-smorest and the app's hooks cost about as much CPU per request
as the rest of the work, so this small WSGI middleware answers pixel GETs itself and
hands everything else (HEAD, the beacon, the API) to Flask unchanged. It does what the
Flask view does: request id in and out, prefetch check, token, verdict, a durable store
write before the response, the metrics, the same GIF and headers. It sits inside
ProxyFix, so ``REMOTE_ADDR`` is the client's address when TRUSTED_PROXIES is set.
Location pixels (``/v1/pixel/l/<prefix>/<documentId>.gif``, ``ingest/prefixes.py``) are
answered here too, the same way, their document named by the path instead of a token.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy.exc import DBAPIError
from werkzeug.datastructures import EnvironHeaders

from ..ingest import prefixes
from ..ingest.pixels import GIF, GIF_HEADERS, is_prefetch
from ..ingest.views import build_view
from ..metrics import observe_ingest

logger = logging.getLogger("service.pixel_api")

PREFIX = "/v1/pixel/"
LOCATION_PIXEL = prefixes.ROUTE.removeprefix(PREFIX)  # "l/", then <prefix>/<documentId>
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_for(incoming: str) -> str:
    """The caller's ``X-Request-ID`` when it is a sane one, else a new id."""
    return incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def record_view(svc, token: str, *, source: str, user_agent: str | None, ip: str | None,
                request_id: str | None) -> bool:
    """Record a view for a valid token (for a location pixel, ``source`` is
    ``prefixes.SOURCE`` and ``token`` the path after ``PREFIX``); never raise (the
    response must not fail)."""
    log = {"source": source, "request_id": request_id}
    try:
        now = svc.clock()
        if source == prefixes.SOURCE:
            target = svc.location_pixels.resolve(token.removeprefix(LOCATION_PIXEL), now=now)
        else:
            target = svc.pixel_signer.verify(token, now=now)
        if target is None:
            logger.info("pixel.invalid_token", extra=log)
            return False
        user_agent = (user_agent or "")[:512] or None
        view = build_view(svc.classifier, machine_opens=svc.config["MACHINE_OPENS"],
                          kind=target.kind, location_id=target.location_id,
                          document_id=target.document_id, viewed_at=now, source=source,
                          user_agent=user_agent, ip=ip, request_id=request_id)
        accepted = svc.store.record_views([view], now=now)
        observe_ingest([view], accepted, source=source)
        return True
    except DBAPIError as exc:  # the store is down: one line per view, not a traceback
        logger.warning("pixel.record_failed", extra={**log, "error": type(exc.orig).__name__})
        return False
    except Exception:  # anything else: log it with its traceback, still answer
        logger.exception("pixel.record_failed", extra=log)
        return False


class PixelFrontDoor:
    """WSGI middleware: pixel GETs answered here, every other request passed on."""

    def __init__(self, wsgi_app: Callable, svc):
        self.wsgi_app = wsgi_app
        self.svc = svc
        self.headers = list(GIF_HEADERS.items())

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith(PREFIX):
            return self.wsgi_app(environ, start_response)
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        if path.endswith(".gif") and not is_prefetch(EnvironHeaders(environ)):
            # PATH_INFO carries the URL's bytes as latin-1; decode them as Flask would.
            token = path[len(PREFIX):-len(".gif")].encode("latin-1").decode("utf-8", "replace")
            source = prefixes.SOURCE if token.startswith(LOCATION_PIXEL) else "pixel"
            record_view(self.svc, token, source=source,
                        user_agent=environ.get("HTTP_USER_AGENT"),
                        ip=environ.get("REMOTE_ADDR"), request_id=request_id)
        start_response("200 OK", [*self.headers, ("X-Request-ID", request_id)])
        return [GIF]
