"""HighLevel's OAuth endpoints, for the fake HighLevel server (tests/fake_highlevel.py).

``FakeHighLevel(...).oauth`` is a ``FakeOAuth``; the server routes every ``/oauth/`` request
here. It answers

- ``POST /oauth/token`` (form body): ``grant_type=authorization_code`` trades a one-time code
  from ``authorize()`` for a token pair; ``grant_type=refresh_token`` trades a refresh token
  for a NEW pair and kills the old refresh token (single use: of concurrent refreshes with
  one refresh token exactly one succeeds). The old access token keeps working until it
  expires, as at HighLevel, unless a test revokes it (``fake.tokens.discard(token)``).
- ``POST /oauth/locationToken`` (form body, ``Version`` header, an agency (Company) access
  token as bearer): a location access token, without a refresh token.

Every access token minted here is registered with the server (added to ``fake.tokens`` when
that is a set), so the PATCH endpoints accept it until it expires by ``fake.clock``.

Error bodies: see the constants below and where each comes from. HighLevel does not document
its OAuth error bodies; the ``invalid_grant`` ones follow reports of what it answers (the
wording is node ``oauth2-server``'s, as is HighLevel's "Invalid token: access token is
invalid"); "Location is not active" (400) is from GoHighLevel/highlevel-api-docs issue #249;
the rest are guesses in HighLevel's usual shapes, each marked as such.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

__all__ = [
    "CODE_EXPIRED",
    "INVALID_ACCESS_TOKEN",
    "INVALID_CLIENT",
    "INVALID_CODE",
    "INVALID_REFRESH_TOKEN",
    "LOCATION_NOT_ACTIVE",
    "LOCATION_TOKEN_PATH",
    "OAUTH_PATHS",
    "OAUTH_PREFIX",
    "TOKEN_PATH",
    "FakeOAuth",
    "mask",
    "oauth_contract_error",
]

OAUTH_PREFIX = "/oauth/"
TOKEN_PATH = "/oauth/token"
LOCATION_TOKEN_PATH = "/oauth/locationToken"
OAUTH_PATHS = (TOKEN_PATH, LOCATION_TOKEN_PATH)
FORM = "application/x-www-form-urlencoded"
API_VERSION = "2021-07-28"  # the Version header apps/oauth.json requires (as fake_highlevel)
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")  # apps/oauth.json
USER_TYPES = ("Company", "Location")  # apps/oauth.json
YEAR = 365 * 86_400.0

# ---- error bodies ------------------------------------------------------------------------
# A refresh token that is unknown, already used or revoked: 400. Reported HighLevel answer.
INVALID_REFRESH_TOKEN = {
    "error": "invalid_grant",
    "error_description": "Invalid grant: refresh token is invalid",
}
# Refresh tokens live a year. Wording: oauth2-server (not seen from HighLevel).
REFRESH_TOKEN_EXPIRED = {
    "error": "invalid_grant",
    "error_description": "Invalid grant: refresh token has expired",
}
# An authorization code that is unknown or already used: 400. Wording: oauth2-server.
INVALID_CODE = {
    "error": "invalid_grant",
    "error_description": "Invalid grant: authorization code is invalid",
}
CODE_EXPIRED = {
    "error": "invalid_grant",
    "error_description": "Invalid grant: authorization code has expired",
}
# Refresh (or location token) for a suspended location: 400, and the refresh token survives.
# Status and message: GoHighLevel/highlevel-api-docs#249. The body's shape is a guess (Nest's
# usual {statusCode, message, error}).
LOCATION_NOT_ACTIVE = {
    "statusCode": 400,
    "message": "Location is not active",
    "error": "Bad Request",
}
# Wrong client_id or client_secret: GUESSED (nothing public shows HighLevel's answer). Nest's
# 401 shape, as apps/oauth.json documents for 401. oauth2-server itself would answer
# 400 {"error": "invalid_client", "error_description": "Invalid client: client is invalid"}.
INVALID_CLIENT = {
    "statusCode": 401,
    "message": "Invalid client: client is invalid",
    "error": "Unauthorized",
}
# Bearer missing, unknown, expired or revoked (locationToken): HighLevel's usual 401.
INVALID_ACCESS_TOKEN = {
    "statusCode": 401,
    "message": "Invalid token: access token is invalid",
    "error": "Unauthorized",
}
# GUESSED: a Location token (or a Private Integration Token) used for an agency-only route.
NOT_AN_AGENCY_TOKEN = {
    "statusCode": 401,
    "message": "This authClass is not yet supported!",
    "error": "Unauthorized",
}
# GUESSED: an agency token asking for another company's location.
OTHER_COMPANY = {
    "statusCode": 401,
    "message": "The token does not have access to this company.",
    "error": "Unauthorized",
}
# GUESSED: a location the agency did not approve when installing the app.
NOT_INSTALLED = {
    "statusCode": 400,
    "message": "The app is not installed on this location.",
    "error": "Bad Request",
}


def _oauth_error(error: str, description: str) -> dict[str, str]:
    """oauth2-server's error body (as HighLevel's invalid_grant answers)."""
    return {"error": error, "error_description": description}


def _unprocessable(messages: list[str]) -> dict[str, Any]:
    """HighLevel's DTO validation answer (UnprocessableDTO in common-schemas.json)."""
    return {"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}


def mask(value: str | None) -> str | None:
    """A secret as recorded in ``token_requests``: its last four characters only."""
    if value is None:
        return None
    return "***" + value[-4:] if len(value) > 8 else "***"


# ---- the request contract (used with or without the OpenAPI documents) --------------------
class _Received(Protocol):  # the parts of fake_highlevel.ReceivedRequest used here
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    token: str | None


def is_form(rec: _Received) -> bool:
    return rec.headers.get("Content-Type", "").split(";")[0].strip().lower() == FORM


def parse_form(rec: _Received) -> dict[str, str]:
    """The form body (first value of each field); {} when the body is not a form."""
    if not is_form(rec):
        return {}
    try:
        text = rec.body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    form: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        form.setdefault(key, value)
    return form


def oauth_contract_error(rec: _Received) -> tuple[int, str] | None:
    """The hand-written contract for the OAuth calls: (status, text) of a breach, or None.

    Requests HighLevel would refuse for their form (not for a bad secret or a dead token)."""
    if rec.path not in OAUTH_PATHS or rec.method != "POST":
        return 404, f"Cannot {rec.method} {rec.path}"
    if rec.path == LOCATION_TOKEN_PATH:
        if rec.token is None:
            return 401, INVALID_ACCESS_TOKEN["message"]
        version = rec.headers.get("Version")
        if version != API_VERSION:
            return 400, (
                "Version header was not found"
                if version is None
                else f"Version header must be {API_VERSION}, got {version!r}"
            )
    if not is_form(rec):
        return 400, f"Content-Type must be {FORM}"
    form = parse_form(rec)
    if rec.path == LOCATION_TOKEN_PATH:
        required: tuple[str, ...] = ("companyId", "locationId")
    else:
        required = ("client_id", "client_secret", "grant_type")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            required += ("code",)
        elif grant == "refresh_token":
            required += ("refresh_token",)
    for name in required:
        if not form.get(name):
            return 400, f"{name} is required"
    if rec.path == TOKEN_PATH:
        if form["grant_type"] not in GRANT_TYPES:
            return 400, f"grant_type must be one of {', '.join(GRANT_TYPES)}"
        if "user_type" in form and form["user_type"] not in USER_TYPES:
            return 400, f"user_type must be one of {', '.join(USER_TYPES)}"
    return None


# ---- the fake ----------------------------------------------------------------------------
class _Server(Protocol):  # what FakeOAuth needs of FakeHighLevel
    tokens: set[str] | None
    clock: Callable[[], float]


@dataclass
class _Grant:
    """An installation, as a code or refresh token carries it."""

    user_type: str  # Location | Company
    location_id: str | None
    company_id: str
    user_id: str
    scope: str
    approved_locations: tuple[str, ...] | None
    expires_at: float  # of the code or refresh token, by the server's clock
    redirect_uri: str | None = None  # codes only


@dataclass
class _Access:
    user_type: str
    location_id: str | None
    company_id: str
    approved_locations: tuple[str, ...] | None
    expires_at: float


class FakeOAuth:
    """HighLevel's OAuth server as the fake HighLevel answers it. Thread-safe."""

    def __init__(
        self,
        server: _Server,
        *,
        client_id: str = "test-client-id",
        client_secret: str = "test-client-secret",
    ) -> None:
        self.server = server
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = 86_399  # of access tokens minted by refreshes and locationToken
        self.refresh_token_lifetime = YEAR
        self.code_lifetime = 600.0  # GUESSED: HighLevel doesn't say how long a code lasts
        self.scope = "invoices.readonly invoices.write"
        self.user_id = "FakeInstallingUser01"  # the user who installed the app
        self.inactive_locations: set[str] = set()
        self.refresh_calls = 0  # grant_type=refresh_token requests, successful or not
        self.location_token_calls = 0
        self.token_requests: list[dict[str, str | None]] = []  # forms; secrets masked
        self.location_token_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        self._access_tokens: dict[str, _Access] = {}

    # ---- test controls ---------------------------------------------------------------
    def authorize(
        self,
        *,
        user_type: str = "Location",
        location_id: str | None = None,
        company_id: str | None = None,
        approved_locations: list[str] | None = None,
        redirect_uri: str | None = None,
    ) -> str:
        """A one-time authorization code, as HighLevel's chooselocation page redirects back
        with. With ``redirect_uri``, the exchange must send the same one."""
        grant = self._grant(user_type, location_id, company_id, approved_locations)
        grant.expires_at = self.server.clock() + self.code_lifetime
        grant.redirect_uri = redirect_uri
        code = _secret(40, "0123456789abcdef")
        with self._lock:
            self._codes[code] = grant
        return code

    def issue(
        self,
        *,
        user_type: str = "Location",
        location_id: str | None = None,
        company_id: str | None = None,
        expires_in: int = 86_399,
        approved_locations: list[str] | None = None,
    ) -> dict[str, Any]:
        """A token pair made directly (HighLevel's JSON for it); both tokens are live."""
        grant = self._grant(user_type, location_id, company_id, approved_locations)
        with self._lock:
            return self._mint_pair(grant, expires_in)

    def refresh_token_valid(self, refresh_token: str) -> bool:
        with self._lock:
            grant = self._refresh_tokens.get(refresh_token)
            return grant is not None and grant.expires_at > self.server.clock()

    def is_expired(self, access_token: str | None) -> bool:
        """True for an access token minted here whose lifetime is over (fake.clock)."""
        with self._lock:
            access = self._access_tokens.get(access_token or "")
            return access is not None and access.expires_at <= self.server.clock()

    # ---- request handling (called by FakeHighLevel for POSTs to OAUTH_PATHS) -------------
    def handle(
        self, rec: _Received, violation: tuple[int, str] | None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one OAuth request. ``violation`` is what the contract or
        the OpenAPI document found wrong with it: a request HighLevel would refuse changes
        nothing here."""
        form = parse_form(rec)
        if rec.path == LOCATION_TOKEN_PATH:
            return self._location_token(rec, form, violation)
        return self._token(form, violation)

    def _token(
        self, form: dict[str, str], violation: tuple[int, str] | None
    ) -> tuple[int, dict[str, Any]]:
        grant_type = form.get("grant_type")
        with self._lock:
            self.token_requests.append(_masked(form))
            if grant_type == "refresh_token":
                self.refresh_calls += 1
        problems = [f"{name} must be a string" for name in
                    ("client_id", "client_secret", "grant_type") if name not in form]
        if grant_type is not None and grant_type not in GRANT_TYPES:
            problems.append(f"grant_type must be one of the following values: "
                            f"{', '.join(GRANT_TYPES)}")
        if "user_type" in form and form["user_type"] not in USER_TYPES:
            problems.append(f"user_type must be one of the following values: "
                            f"{', '.join(USER_TYPES)}")
        if problems:  # a JSON body lands here too: its fields are not form fields
            return 422, _unprocessable(problems)
        if form["client_id"] != self.client_id or form["client_secret"] != self.client_secret:
            return 401, dict(INVALID_CLIENT)
        if grant_type == "client_credentials":  # documented, but not for a marketplace app
            return 400, _oauth_error(
                "unauthorized_client", "Unauthorized client: `grant_type` is invalid")
        field = "code" if grant_type == "authorization_code" else "refresh_token"
        if not form.get(field):
            return 400, _oauth_error("invalid_request", f"Missing parameter: `{field}`")
        if violation is not None:
            return 400, {"statusCode": 400, "message": violation[1], "error": "Bad Request"}
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        return self._refresh(form)

    def _exchange_code(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = form["code"]
        with self._lock:
            grant = self._codes.get(code)
            if grant is None:
                return 400, dict(INVALID_CODE)
            if grant.expires_at <= self.server.clock():
                del self._codes[code]
                return 400, dict(CODE_EXPIRED)
            if grant.redirect_uri is not None and form.get("redirect_uri") != grant.redirect_uri:
                return 400, _oauth_error(
                    "invalid_request", "Invalid request: `redirect_uri` is invalid")
            if form.get("user_type", grant.user_type) != grant.user_type:  # GUESSED answer
                return 400, _oauth_error(
                    "invalid_request", f"Invalid request: this code is for a {grant.user_type} "
                    f"token, not {form['user_type']}")
            del self._codes[code]  # single use
            return 200, self._mint_pair(grant, self.expires_in)

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        old = form["refresh_token"]
        with self._lock:  # find, check and kill in one step: one winner per refresh token
            grant = self._refresh_tokens.get(old)
            if grant is None:
                return 400, dict(INVALID_REFRESH_TOKEN)
            if grant.expires_at <= self.server.clock():
                del self._refresh_tokens[old]
                return 400, dict(REFRESH_TOKEN_EXPIRED)
            if form.get("user_type", grant.user_type) != grant.user_type:  # GUESSED answer
                return 400, _oauth_error(
                    "invalid_request", f"Invalid request: this is a {grant.user_type} "
                    f"refresh token, not {form['user_type']}")
            if grant.location_id is not None and grant.location_id in self.inactive_locations:
                return 400, dict(LOCATION_NOT_ACTIVE)  # the refresh token survives
            del self._refresh_tokens[old]
            return 200, self._mint_pair(grant, self.expires_in)

    def _location_token(
        self, rec: _Received, form: dict[str, str], violation: tuple[int, str] | None
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.location_token_calls += 1
            self.location_token_requests.append(dict(form))
        bearer, tokens = rec.token, self.server.tokens
        with self._lock:
            agency = self._access_tokens.get(bearer or "")
            expired = agency is not None and agency.expires_at <= self.server.clock()
        accepted = bearer is not None and (tokens is None or bearer in tokens)
        if not accepted or expired or (agency is None and tokens is None):
            return 401, dict(INVALID_ACCESS_TOKEN)  # no token, or not one HighLevel knows
        if agency is None or agency.user_type != "Company":
            return 401, dict(NOT_AN_AGENCY_TOKEN)  # a location token or a PIT
        problems = [f"{name} must be a string" for name in ("companyId", "locationId")
                    if name not in form]
        if problems:
            return 422, _unprocessable(problems)
        if violation is not None:
            return 400, {"statusCode": 400, "message": violation[1], "error": "Bad Request"}
        location_id = form["locationId"]
        if form["companyId"] != agency.company_id:
            return 401, dict(OTHER_COMPANY)
        if agency.approved_locations is not None and location_id not in agency.approved_locations:
            return 400, dict(NOT_INSTALLED)
        if location_id in self.inactive_locations:  # GUESSED: as for a refresh
            return 400, dict(LOCATION_NOT_ACTIVE)
        access = _secret(48)
        with self._lock:
            self._register(access, "Location", location_id, agency.company_id, None,
                           self.expires_in)
        return 200, {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
            "locationId": location_id,
            "userId": self.user_id,
        }

    # ---- minting (caller holds self._lock where noted) ------------------------------------
    def _grant(
        self,
        user_type: str,
        location_id: str | None,
        company_id: str | None,
        approved_locations: list[str] | None,
    ) -> _Grant:
        if user_type not in USER_TYPES:
            raise ValueError(f"user_type must be one of {USER_TYPES}, not {user_type!r}")
        if user_type == "Company" and location_id is not None:
            raise ValueError("a Company grant has no location_id (use approved_locations)")
        if user_type == "Location" and approved_locations is not None:
            raise ValueError("approved_locations is for Company grants")
        return _Grant(
            user_type=user_type,
            location_id=(location_id or _new_id()) if user_type == "Location" else None,
            company_id=company_id or _new_id(),
            user_id=self.user_id,
            scope=self.scope,
            approved_locations=None if approved_locations is None else tuple(approved_locations),
            expires_at=0.0,
        )

    def _mint_pair(self, grant: _Grant, expires_in: int) -> dict[str, Any]:
        """A new access and refresh token for ``grant`` (caller holds self._lock)."""
        access, refresh = _secret(48), _secret(40)
        self._register(access, grant.user_type, grant.location_id, grant.company_id,
                       grant.approved_locations, expires_in)
        self._refresh_tokens[refresh] = _Grant(
            grant.user_type, grant.location_id, grant.company_id, grant.user_id, grant.scope,
            grant.approved_locations, self.server.clock() + self.refresh_token_lifetime,
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": grant.scope,
            "userType": grant.user_type,
            "companyId": grant.company_id,
        }
        if grant.location_id is not None:
            body["locationId"] = grant.location_id
        if grant.approved_locations is not None:
            body["approvedLocations"] = list(grant.approved_locations)
        body["isBulkInstallation"] = grant.approved_locations is not None
        body["userId"] = grant.user_id
        return body

    def _register(
        self,
        access: str,
        user_type: str,
        location_id: str | None,
        company_id: str,
        approved: tuple[str, ...] | None,
        expires_in: int,
    ) -> None:
        """Make ``access`` a token the server accepts (caller holds self._lock)."""
        self._access_tokens[access] = _Access(
            user_type, location_id, company_id, approved, self.server.clock() + expires_in)
        tokens = self.server.tokens
        if tokens is not None:
            tokens.add(access)


def _masked(form: dict[str, str]) -> dict[str, str | None]:
    secret_fields = ("client_secret", "code", "refresh_token")
    return {k: mask(v) if k in secret_fields else v for k, v in form.items()}


def _secret(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _new_id() -> str:
    """An id shaped like HighLevel's location and company ids (20 characters)."""
    return _secret(20)
