"""Signing in and out of the console, and the guard in front of every console page.

Sign-in takes a key with the ``admin`` scope from a POSTed form (never a URL), checks it
with the API's own check (``auth.grant_for``: every ``ADMIN_API_KEYS`` key in constant time,
then the stored keys) and keeps in the signed session cookie only a fingerprint of the key:
an HMAC under the session secret (of the key itself for an environment key, of its stored
hash for a stored key, whose id the session holds too), so the cookie (signed, not
encrypted) never carries the key. Every request checks the fingerprint again: removing a
key from ``ADMIN_API_KEYS``, or revoking a stored key (read from the store on each console
request, no cache), ends the sessions opened with it at their next request. Failed sign-ins
are logged without the key and throttled per client address (``SigninThrottle``).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import logging
import threading
from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from werkzeug.exceptions import Unauthorized

from ...store.apikeys import hash_key
from ..auth import grant_for
from ..deps import services
from . import bp, csrf, error_page

logger = logging.getLogger(__name__)

PUBLIC_ENDPOINTS = frozenset({"console.static", "console.signin"})
SESSION_KEY = "admin"  # the session's fingerprint of the admin key that signed in
SESSION_KEY_ID = "key_id"  # a stored key's id (absent for an environment key)
MAX_KEY_LENGTH = 4096


class SigninThrottle:
    """At most ``limit`` failed sign-ins per client address in ``window``, per process.

    Admin keys are long and random, so guessing is hopeless anyway; this keeps a script from
    trying at full speed and keeps the log readable. Addresses are forgotten oldest first
    past ``max_addresses``, so memory stays bounded whatever the traffic.
    """

    def __init__(self, *, limit: int = 10, window: dt.timedelta = dt.timedelta(minutes=5),
                 max_addresses: int = 10_000):
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self._failures: collections.OrderedDict[str, list[dt.datetime]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def _recent(self, address: str, now: dt.datetime) -> list[dt.datetime]:
        times = [t for t in self._failures.get(address, []) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def retry_after(self, address: str, *, now: dt.datetime) -> int:
        """Seconds until ``address`` may try again; 0 if it may now."""
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.limit:
                return 0
            return max(1, int((times[0] + self.window - now).total_seconds()) + 1)

    def failed(self, address: str, *, now: dt.datetime) -> None:
        with self._lock:
            times = self._recent(address, now)
            self._failures[address] = [*times, now]
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)


def throttle() -> SigninThrottle:
    return current_app.extensions.setdefault("console.signin_throttle", SigninThrottle())


def fingerprints() -> set[str]:
    """The session fingerprints that stand for a configured admin key (under each session
    secret, so a session signed before a rotation stays valid while its key is listed)."""
    cfg = services().config
    return {hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()
            for secret in cfg["SESSION_SECRET_KEYS"] for key in cfg["ADMIN_API_KEYS"]}


def stored_fingerprints(key_id: object) -> set[str]:
    """The fingerprints that stand for the stored key ``key_id`` while it is unrevoked and
    holds ``admin`` (read from the store now: a revocation ends the session at once)."""
    if not isinstance(key_id, int) or isinstance(key_id, bool):
        return set()
    found = services().keys.console_key(key_id)
    if found is None or not found[1].has("admin"):
        return set()
    return {hmac.new(secret.encode(), found[0].encode(), hashlib.sha256).hexdigest()
            for secret in services().config["SESSION_SECRET_KEYS"]}


def signed_in() -> bool:
    held = session.get(SESSION_KEY)
    if not isinstance(held, str):
        return False
    key_id = session.get(SESSION_KEY_ID)
    found = False
    for fingerprint in stored_fingerprints(key_id) if key_id is not None else fingerprints():
        found |= hmac.compare_digest(held.encode(), fingerprint.encode())  # no early exit
    return found


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this relay, else the overview."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/") \
            or "\\" in parts.path:
        return url_for("console.overview")
    return parts.path + (f"?{parts.query}" if parts.query else "")


@bp.before_request
def guard():
    """Signed in, or sent to sign in (a page) or refused (a form); then the CSRF token."""
    if request.endpoint == "console.static":
        return None
    if request.endpoint not in PUBLIC_ENDPOINTS and not signed_in():
        if request.method in ("GET", "HEAD"):
            return redirect(url_for("console.signin", next=request.full_path.rstrip("?")))
        logger.info("console.signed_out_request", extra={"endpoint": request.endpoint})
        raise Unauthorized("You are not signed in (or your session has ended). Nothing was "
                           "changed. Sign in and try again.")
    csrf.protect()  # POST only; a missing or forged token is a 400 page (CSRFError)
    return None


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    """The sign-in form; POST checks the admin key and opens a session."""
    if request.method == "GET":
        if signed_in():
            return redirect(safe_next(request.args.get("next")))
        return render_template("console/signin.html", next=request.args.get("next", ""))
    svc = services()
    now, address = svc.clock(), request.remote_addr or "-"
    wait = throttle().retry_after(address, now=now)
    if wait:
        logger.warning("console.signin_throttled", extra={"remote_addr": address})
        return error_page(429, "Too many attempts", "Too many failed sign-ins from this "
                          f"address. Try again in {wait} seconds.",
                          headers={"Retry-After": str(wait)})
    key = request.form.get("key", "").strip()
    grant = grant_for(key) if key and len(key) <= MAX_KEY_LENGTH else None
    if grant is None or not grant.has("admin"):
        throttle().failed(address, now=now)
        logger.warning("console.signin_failed", extra={"remote_addr": address})
        html = render_template("console/signin.html", next=request.form.get("next", ""),
                               error="That is not an admin key of this relay.")
        return html, 401
    session.clear()  # a fresh session (and CSRF secret) for the signed-in operator
    session.permanent = True
    # A stored key is known by its hash (the store keeps no key); an environment key by itself.
    held = key if grant.key_id is None else hash_key(key)
    session[SESSION_KEY] = hmac.new(svc.config["SESSION_SECRET_KEYS"][0].encode(),
                                    held.encode(), hashlib.sha256).hexdigest()
    if grant.key_id is not None:
        session[SESSION_KEY_ID] = grant.key_id
    logger.info("console.signed_in", extra={"remote_addr": address})
    return redirect(safe_next(request.form.get("next")))


@bp.post("/signout")
def signout():
    """End the session."""
    session.clear()
    flash("You are signed out.", "ok")
    logger.info("console.signed_out", extra={"remote_addr": request.remote_addr})
    return redirect(url_for("console.signin"))
