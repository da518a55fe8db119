"""HighLevel OAuth: exchange an install code, refresh tokens, mint location tokens.

Endpoints (https://highlevel.stoplight.io/docs/integrations/, apps/oauth.json):
- POST /oauth/token          form: client_id, client_secret, grant_type, code |
                             refresh_token, user_type, redirect_uri
- POST /oauth/locationToken  form: companyId, locationId; agency bearer token, Version
Refresh tokens are single-use: every refresh returns a new pair and kills the old
refresh token, so callers must refresh under a lock (``TokenProvider`` in
service/forward/credentials.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from .. import safejson

# Why an OAuth call failed, as far as what to do next is concerned.
INVALID_GRANT = "invalid_grant"  # the refresh token is dead: the location must reinstall
LOCATION_INACTIVE = "location_inactive"  # keep the refresh token; works once reactivated
TRANSIENT = "transient"  # network, 5xx, 429: try again later
REJECTED = "rejected"  # anything else HighLevel refused (bad client, bad request)


class OAuthError(Exception):
    def __init__(self, kind: str, message: str, *, status: int | None = None):
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


@dataclass(frozen=True)
class TokenGrant:
    """What HighLevel returned for a code, a refresh or a location token."""

    access_token: str = field(repr=False)
    expires_in: int | None
    refresh_token: str | None = field(default=None, repr=False)
    user_type: str | None = None  # Location | Company
    location_id: str | None = None
    company_id: str | None = None
    scope: str | None = None
    approved_locations: tuple[str, ...] = ()


class OAuthClient:
    """HighLevel's OAuth endpoints over a ``requests.Session``, with a timeout on every call."""

    def __init__(self, session: requests.Session, base_url: str, *, client_id: str,
                 client_secret: str, version: str = "2021-07-28",
                 timeout: float | tuple = (5.0, 10.0)):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.version = version
        self.timeout = timeout

    def exchange_code(self, code: str, *, redirect_uri: str,
                      user_type: str | None = None) -> TokenGrant:
        """Trade an install's authorization code for tokens.

        ``user_type`` is left out by default: the code already says whether the
        installer chose a location or the agency, and the answer's ``userType`` tells us.
        """
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if user_type:
            form["user_type"] = user_type
        return self._token(form)

    def refresh(self, refresh_token: str, *, user_type: str = "Location") -> TokenGrant:
        """Trade a refresh token (single-use) for a new access and refresh token."""
        return self._token({"grant_type": "refresh_token", "refresh_token": refresh_token,
                            "user_type": user_type})

    def location_token(self, company_token: str, *, company_id: str,
                       location_id: str) -> TokenGrant:
        """Mint a location token with an agency (company) token."""
        body = self._post("/oauth/locationToken",
                          {"companyId": company_id, "locationId": location_id},
                          headers={"Authorization": f"Bearer {company_token}",
                                   "Version": self.version})
        return _grant(body)

    def _token(self, form: dict) -> TokenGrant:
        form = {"client_id": self.client_id, "client_secret": self.client_secret, **form}
        return _grant(self._post("/oauth/token", form, headers={}))

    def _post(self, path: str, form: dict, *, headers: dict) -> dict:
        started = time.monotonic()
        try:
            resp = self.session.post(self.base_url + path, data=form,
                                     headers={"Accept": "application/json", **headers},
                                     timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise OAuthError(TRANSIENT, f"{type(exc).__name__} after "
                             f"{time.monotonic() - started:.1f}s") from None
        try:
            body = safejson.loads(resp.content)  # resp.json() lets a RecursionError through
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if resp.status_code == 200 and body.get("access_token"):
            return body
        raise OAuthError(classify_error(resp.status_code, body), _message(resp, body),
                         status=resp.status_code)


def classify_error(status: int, body: dict) -> str:
    """Tell a dead refresh token from a suspended location from a passing failure."""
    text = " ".join(str(body.get(k, "")) for k in ("error", "error_description", "message"))
    if "not active" in text.lower():
        return LOCATION_INACTIVE
    if status == 429 or status >= 500:
        return TRANSIENT
    if "invalid_grant" in text.lower() or "invalid grant" in text.lower():
        return INVALID_GRANT
    return REJECTED


def _message(resp: requests.Response, body: dict) -> str:
    for key in ("error_description", "message", "error"):
        value = body.get(key)
        if value:
            return f"HTTP {resp.status_code}: " + (
                "; ".join(map(str, value)) if isinstance(value, list) else str(value))[:300]
    return f"HTTP {resp.status_code}"


def _grant(body: dict) -> TokenGrant:
    expires = body.get("expires_in")
    approved = body.get("approvedLocations") or ()
    return TokenGrant(
        access_token=str(body["access_token"]),
        refresh_token=str(body["refresh_token"]) if body.get("refresh_token") else None,
        expires_in=int(expires) if isinstance(expires, (int, float)) else None,
        user_type=body.get("userType"), location_id=body.get("locationId"),
        company_id=body.get("companyId"), scope=body.get("scope"),
        approved_locations=tuple(str(x) for x in approved if isinstance(x, str)),
    )
