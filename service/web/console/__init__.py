"""The operator console: server-rendered pages under ``/console`` for people.

Plain HTML from Jinja templates (``templates/console/``), one stylesheet served by the relay
(``static/``), no script and nothing from another host. Signing in with an admin key sets a
signed session cookie (``session.py``); every form carries a CSRF token (Flask-WTF's
``CSRFProtect``, checked only here: the API authenticates with bearer keys, which a browser
never sends on its own). Pages read through the same store functions as the API, so the
two never disagree. ``init_app`` is the table of contents.
"""

from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, Flask, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")
csrf = CSRFProtect()

SESSION_LIFETIME = dt.timedelta(hours=8)
# Everything a page needs comes from the relay; no inline script or style runs (the charts
# are SVG elements with presentation attributes, which CSP does not count as inline style).
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def init_app(app: Flask) -> None:
    """Register the console, its session cookie and CSRF checks, and ``/``."""
    from . import actions, landing, locations, lookup, overview, prefixes, session  # noqa: F401
    from . import keys as _keys  # noqa: F401

    cfg = app.extensions["service"].config
    keys = cfg["SESSION_SECRET_KEYS"]
    app.config.update(
        SECRET_KEY=keys[0],
        SECRET_KEY_FALLBACKS=keys[1:],  # rotation: the first signs, every one verifies
        SESSION_COOKIE_NAME="relay_console",
        SESSION_COOKIE_PATH="/console",  # the API and the pixel never see it
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=cfg["RELAY_ENV"] != "development",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Checked by the console's own guard (session.guard), not on every POST of the app.
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=int(SESSION_LIFETIME.total_seconds()),
    )
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(landing.bp)
    app.register_error_handler(404, _not_found)


def _not_found(error: HTTPException):
    """A URL no route matched: a page under /console (the blueprint's own handlers never see
    it: no console view was chosen), the API's JSON elsewhere."""
    if request.path.startswith(bp.url_prefix + "/"):
        return _http_error(error)
    from ..errors import handle_http_exception

    return handle_http_exception(error)


@bp.after_request
def _page_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # Flask-WTF's HTTPS Referer check
    if "Cache-Control" not in response.headers:  # the stylesheet sets its own
        response.headers["Cache-Control"] = "no-store"
    return response


def error_page(status: int, title: str, message: str, *, headers: dict | None = None):
    """An HTML error page in the console's layout."""
    html = render_template("console/error.html", title=title, message=message, status=status)
    return html, status, headers or {}


@bp.errorhandler(CSRFError)
def _csrf_refused(error: CSRFError):
    logger.warning("console.csrf_refused", extra={"reason": error.description})
    return error_page(400, "Form refused",
                      "This form was not sent from this console session, or it is too old "
                      f"({error.description.rstrip('.')}). Nothing was changed. Go back, "
                      "reload the page and try again.")


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    headers = dict(error.get_headers())
    headers.pop("Content-Type", None)
    return error_page(error.code or 500, error.name, error.description or error.name,
                      headers=headers)


@bp.errorhandler(OperationalError)
@bp.errorhandler(PoolTimeout)
def _store_down(error: Exception):
    logger.error("store.unavailable", extra={"error": type(error).__name__})
    return error_page(503, "Store unavailable", "The relay cannot reach its store right now. "
                      "Try again in a few seconds.", headers={"Retry-After": "5"})


@bp.errorhandler(Exception)
def _unexpected(error: Exception):
    logger.exception("request.unhandled")
    return error_page(500, "Something went wrong", "The relay could not show this page. "
                      "The error is in its log.")


@bp.app_template_filter("utc")
def _utc(value: dt.datetime | None) -> str:
    """A stored time as people read it: ``2026-01-05 12:00:03 UTC``; a dash for none."""
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("count")
def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"
