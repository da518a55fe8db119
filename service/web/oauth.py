"""The HighLevel app install flow: ``/oauth/install`` and ``/oauth/callback``.

Install starts here (use ``/oauth/install`` as the app's install link): it redirects to
HighLevel's location chooser with a signed, expiring ``state``; the callback checks
the state, exchanges the code (``POST /oauth/token``) and hands the grant to the token
policy (``store_grant`` in service/forward/grants.py), which stores the tokens for the
location, or for the company on an agency install, in one transaction. Errors show a
short page and store nothing.

A state is good once, and only in the browser that started the install: install sets a
cookie with a random nonce and the state carries its hash, so a link made in one browser
(an attacker's, to get a victim to install the attacker's location) is refused in
another; the callback spends the state (``used_webhook_tokens``, in a transaction of its
own) before it asks HighLevel for tokens, so a replayed callback never reaches the token
endpoint with the client secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import urlencode

from flask import Blueprint, make_response, redirect, request
from itsdangerous import BadData, URLSafeTimedSerializer
from markupsafe import escape

from ..forward.grants import UnusableGrantError, store_grant
from ..highlevel.oauth import OAuthError
from .deps import services
from .sources import current_sources

logger = logging.getLogger(__name__)

bp = Blueprint("oauth", __name__, url_prefix="/oauth")
STATE_MAX_AGE = 600  # seconds between /oauth/install and the callback
# The browser's half of a state. SameSite=Lax, not Strict: the callback is a top-level
# redirect from HighLevel's marketplace, another site, and Strict cookies are not sent on it.
INSTALL_COOKIE = "relay_oauth_install"
COOKIE_PATH = "/oauth"
USED_STATE = "oauth-state"  # the source name of a spent state in used_webhook_tokens


def _serializer() -> URLSafeTimedSerializer:
    # Same secret family as pixel tokens, separate salt: a pixel token is never a state.
    keys = list(reversed(services().config["PIXEL_SIGNING_KEYS"]))
    return URLSafeTimedSerializer(keys, salt="relay.oauth-state")


def redirect_uri() -> str:
    cfg = services().config
    return cfg["OAUTH_REDIRECT_URI"] or cfg["PUBLIC_BASE_URL"].rstrip("/") + "/oauth/callback"


def _cookie_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def _cookie_options() -> dict:
    secure = services().config["RELAY_ENV"] == "production"
    return {"path": COOKIE_PATH, "secure": secure, "httponly": True, "samesite": "Lax"}


def page(title: str, body: str, status: int = 200):
    """A small HTML page (the user sees it in the browser after installing)."""
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;"
            "line-height:1.5}</style></head>"
            f"<body><h1>{escape(title)}</h1><p>{body}</p></body></html>")
    return html, status, {"Content-Type": "text/html; charset=utf-8",
                          "Cache-Control": "no-store"}


@bp.get("/install")
def install():
    """Redirect to HighLevel's location chooser with a signed, expiring state."""
    cfg = services().config
    if not (cfg["HIGHLEVEL_CLIENT_ID"] and cfg["HIGHLEVEL_CLIENT_SECRET"]):
        return page("Not configured", "HIGHLEVEL_CLIENT_ID and HIGHLEVEL_CLIENT_SECRET are "
                    "not set on this relay.", 503)
    nonce = secrets.token_urlsafe(32)
    # n: the state's own id, spent by the callback; b: binds it to this browser's cookie.
    state = _serializer().dumps({"n": secrets.token_urlsafe(16), "b": _cookie_hash(nonce)})
    query = urlencode({"response_type": "code", "redirect_uri": redirect_uri(),
                       "client_id": cfg["HIGHLEVEL_CLIENT_ID"],
                       "scope": cfg["HIGHLEVEL_OAUTH_SCOPES"], "state": state})
    response = redirect(f"{cfg['HIGHLEVEL_MARKETPLACE_URL']}/v2/oauth/chooselocation?{query}")
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(INSTALL_COOKIE, nonce, max_age=STATE_MAX_AGE, **_cookie_options())
    return response


@bp.get("/callback")
def callback():
    """Check the state and its browser, spend it, exchange the code, store the tokens.

    The install cookie is cleared whatever the outcome: a new attempt starts from
    ``/oauth/install``.
    """
    response = make_response(_complete_install())
    response.delete_cookie(INSTALL_COOKIE, **_cookie_options())
    return response


def _complete_install():
    svc = services()
    if request.args.get("error"):
        return page("Not installed", "The installation was cancelled or refused: "
                    f"{escape(request.args.get('error'))}.", 400)
    code, state = request.args.get("code"), request.args.get("state")
    if not code or not state or len(code) > 512:
        return page("Not installed", "The link is missing its code or state. Start the "
                    "installation again from the install link.", 400)
    try:
        payload = _serializer().loads(state, max_age=STATE_MAX_AGE)
    except BadData:
        payload = None
    if not (isinstance(payload, dict) and isinstance(payload.get("n"), str)
            and isinstance(payload.get("b"), str)):
        return page("Not installed", "The installation link has expired or was not made "
                    "by this relay. Start the installation again.", 400)
    nonce = request.cookies.get(INSTALL_COOKIE)
    if nonce is None or not hmac.compare_digest(_cookie_hash(nonce), payload["b"]):
        # Checked before the state is spent: a stranger's request cannot use it up.
        logger.warning("oauth.state_rejected", extra={"reason": "browser"})
        return page("Not installed", "This installation was started in another browser, or "
                    "this browser did not keep its cookie. Start the installation again "
                    "from the install link, in this browser.", 400)
    if svc.oauth is None:
        return page("Not configured", "HIGHLEVEL_CLIENT_ID and HIGHLEVEL_CLIENT_SECRET are "
                    "not set on this relay.", 503)
    # Spent before the exchange, and kept spent if the exchange fails: the code may have
    # reached HighLevel, and a new install link costs the user one click.
    if not current_sources().tokens.claim(USED_STATE, payload["n"], now=svc.clock()):
        logger.warning("oauth.state_rejected", extra={"reason": "replayed"})
        return page("Not installed", "This installation link has already been used. Start "
                    "the installation again from the install link.", 400)
    try:
        grant = svc.oauth.exchange_code(code, redirect_uri=redirect_uri())
    except OAuthError as exc:
        logger.warning("oauth.exchange_failed", extra={"kind": exc.kind, "status": exc.status,
                                                       "error": exc.message})
        return page("Not installed", f"HighLevel did not accept the installation "
                    f"({escape(exc.message)}). Nothing was stored; please try again.", 502)
    try:
        what = store_grant(svc.vault, grant, now=svc.clock())
    except UnusableGrantError:
        return page("Not installed", "HighLevel's answer had no refresh token or no "
                    "location. Nothing was stored.", 502)
    logger.info("oauth.installed", extra={"user_type": grant.user_type,
                                          "location_id": grant.location_id,
                                          "company_id": grant.company_id})
    return page("Installed", f"The invoice view relay is now connected to {escape(what)}.")
