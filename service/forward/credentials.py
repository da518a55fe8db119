"""The token policy: when a location's token is used, refreshed, minted from its agency's
token, counted against, marked invalid or inactive and tried again; and what a HighLevel
401/403 means for it (how an OAuth install's grant becomes stored tokens: ``grants``).

The vault (service/store/tokens.py) only keeps rows; every decision about them is made
here. The forwarder asks ``TokenProvider`` for the credentials to send with and lets it
``send`` (a 401 renews the token and sends once more). No Flask here.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..clock import expiry
from ..highlevel.client import Response
from ..highlevel.oauth import (
    INVALID_GRANT,
    LOCATION_INACTIVE,
    OAuthClient,
    OAuthError,
)
from ..metrics import observe_refresh
from ..store.installs import installed_company
from ..store.tokens import (
    ACTIVE,
    AGENCY,
    INACTIVE,
    INVALID,
    MINTED,
    StoredToken,
    TokenDecryptError,
    TokenVault,
)

logger = logging.getLogger(__name__)

INACTIVE_RETRY = dt.timedelta(hours=1)  # a "Location is not active" refresh is tried again
RETRY, INVALIDATED = "retry", "invalid"  # what a 401/403 did to the token
# Why a location's views wait (blocked) instead of being sent: the outcomes' names.
NO_TOKEN, TOKEN_INVALID, TOKEN_UNREADABLE = "no_token", "token_invalid", "token_unreadable"


@dataclass(frozen=True)
class Credentials:
    """The token a send goes out with (never the refresh token; ``repr`` hides it)."""

    location_id: str
    token_kind: str
    generation: int
    unauthorized_count: int
    access_token: str = field(repr=False)
    expires_at: dt.datetime | None = None
    company_id: str | None = None
    refreshable: bool = False

    @classmethod
    def of(cls, stored: StoredToken) -> Credentials:
        """Return the credentials of a stored token (decrypting its access token)."""
        return cls(location_id=stored.location_id, token_kind=stored.token_kind,
                   generation=stored.generation, unauthorized_count=stored.unauthorized_count,
                   access_token=stored.access_token(), expires_at=stored.expires_at,
                   company_id=stored.company_id, refreshable=stored.refreshable)

    def expiring(self, now: dt.datetime, margin: dt.timedelta) -> bool:
        return self.expires_at is not None and self.expires_at - now <= margin


@dataclass(frozen=True)
class Refusal:
    """Why a location cannot send now: its views wait, blocked, for a usable token."""

    reason: str  # NO_TOKEN | TOKEN_INVALID | TOKEN_UNREADABLE
    message: str | None
    park_location: bool = False  # every pending view of the location waits, not just this
    response: Response | None = None  # HighLevel's answer that showed it (a 401/403)


class TokenProvider:
    """Hands the forwarder a token it can use now, renewing it when it must."""

    def __init__(self, vault: TokenVault, oauth: OAuthClient | None = None, *,
                 margin: dt.timedelta = dt.timedelta(minutes=5)):
        self.vault = vault
        self.oauth = oauth  # None: no OAuth app configured, tokens are used as stored
        self.margin = margin  # OAuth tokens are refreshed this long before they expire
        self._invalidated: set[tuple[str, int]] = set()  # (location, token generation)

    def get(self, location_id: str, *, now: dt.datetime) -> Credentials | Refusal:
        """A usable token for the location (its own, refreshed if due, or minted), or why
        there is none. A token no key decrypts is marked invalid: retrying cannot help
        until an operator restores the key or stores a new token."""
        return self._usable(location_id, self.vault.read(location_id), now=now)

    def get_many(self, location_ids: Iterable[str], *, now: dt.datetime
                 ) -> dict[str, Credentials | Refusal]:
        """``get`` for a batch's locations, their rows read in one query."""
        stored = self.vault.read_many(location_ids)
        return {loc: self._usable(loc, stored.get(loc), now=now) for loc in location_ids}

    def _usable(self, location_id: str, stored: StoredToken | None, *,
                now: dt.datetime) -> Credentials | Refusal:
        try:
            creds = self._get(location_id, stored, now=now)
        except TokenDecryptError as exc:
            with self.vault.hold(location_id) as row:
                row.mark(status=INVALID, message=str(exc), now=now)
            return Refusal(TOKEN_UNREADABLE, str(exc), park_location=True)
        return creds or Refusal(NO_TOKEN, "no active token for this location")

    def _get(self, location_id: str, stored: StoredToken | None, *,
             now: dt.datetime) -> Credentials | None:
        if stored is None or stored.status != ACTIVE:
            return self._mint(location_id, now=now)
        creds = Credentials.of(stored)
        if self.oauth is None or not creds.expiring(now, self.margin):
            return creds
        if creds.refreshable:
            return self._refresh(location_id, now=now) or (
                None if creds.expiring(now, dt.timedelta(0)) else creds)
        if creds.token_kind == MINTED:
            return self._mint(location_id, now=now, company_id=creds.company_id) or creds
        return creds

    def send(self, creds: Credentials, request: Callable[[str], Response], *,
             clock: Callable[[], dt.datetime]) -> Response | Refusal:
        """Call ``request(access_token)`` and judge HighLevel's answer for the token.

        After a 401 an OAuth token is renewed and the request made once more. A 401 or
        403 that stands counts against the token (``record_rejection``): the answer comes
        back as it is while the token stays usable, a ``Refusal`` once it is invalid (or
        when another send found it invalid meanwhile). A success clears the count.

        :raises HighLevelError: from ``request``.
        """
        if (creds.location_id, creds.generation) in self._invalidated:
            return Refusal(TOKEN_INVALID, "token found invalid")
        resp = request(creds.access_token)
        if resp.status == 401:
            # An OAuth token may have expired early: refresh (single-flight across
            # processes) and send once more with the new one.
            renewed = self.renew(creds, now=clock())
            if renewed is not None:
                creds = renewed
                resp = request(creds.access_token)
        if resp.status in (401, 403):
            if self.record_rejection(creds, status=resp.status, message=resp.message,
                                     now=clock()) == INVALIDATED:
                self._invalidated.add((creds.location_id, creds.generation))
                return Refusal(TOKEN_INVALID, resp.message, park_location=True,
                               response=resp)
        elif 200 <= resp.status < 300 and creds.unauthorized_count:
            with self.vault.hold(creds.location_id) as row:
                row.clear_unauthorized(generation=creds.generation, now=clock())
        return resp

    def record_rejection(self, creds: Credentials, *, status: int, message: str | None,
                         now: dt.datetime) -> str:
        """Count a 401/403 for this token; return ``retry`` or ``invalid``.

        A 403 means the token lacks access: invalid at once. A 401 can be a gateway
        hiccup, so the token is invalid only after a second 401 in a row. A token
        replaced meanwhile is not counted against its replacement.
        """
        with self.vault.hold(creds.location_id) as row:
            message = message or f"HTTP {status}"
            count = row.count_unauthorized(generation=creds.generation, message=message,
                                           now=now)
            if count is None:
                return RETRY  # replaced meanwhile: the new token gets its own chance
            if status == 403 or count >= 2:
                row.mark(status=INVALID, message=message, generation=creds.generation,
                         now=now)
                return INVALIDATED
            return RETRY

    def renew(self, creds: Credentials, *, now: dt.datetime) -> Credentials | None:
        """After a 401: a renewed token (new generation), or None if it cannot be renewed."""
        if self.oauth is None:
            return None
        if creds.refreshable:
            renewed = self._refresh(creds.location_id, now=now, stale=creds.generation)
        elif creds.token_kind == MINTED:
            renewed = self._mint(creds.location_id, now=now, company_id=creds.company_id)
        else:
            return None
        return renewed if renewed and renewed.generation != creds.generation else None

    def retry_inactive(self, *, now: dt.datetime) -> list[str]:
        """Try locations parked as "not active" again; return those that work now."""
        revived = []
        for location_id in self.vault.inactive_due(now):
            if self.oauth is not None and self._refresh(location_id, now=now) is not None:
                revived.append(location_id)
        return revived

    def _refresh(self, location_id: str, *, now: dt.datetime,
                 stale: int | None = None) -> Credentials | None:
        creds = self._refresh_once(location_id, now=now, stale=stale)
        logger.info("token.refresh", extra={"location_id": location_id,
                                            "ok": creds is not None})
        observe_refresh(creds is not None)
        return creds

    def _refresh_once(self, location_id: str, *, now: dt.datetime,
                      stale: int | None) -> Credentials | None:
        """Refresh an OAuth token once, across every process; return usable credentials.

        Single-flight: the location's row is locked, re-read, and refreshed only if it is
        still the stale one (``stale``, the generation that got a 401) or still due (ahead
        of expiry). Refresh tokens are single-use, so the new access and refresh tokens are
        stored in the same transaction: no process ever uses or refreshes the dead one.
        """
        with self.vault.hold(location_id) as row:
            stored = row.read()
            if stored is None or stored.status == INVALID or not stored.refreshable:
                return None
            if stored.status == INACTIVE and stored.retry_at is not None and stored.retry_at > now:
                return None
            current = Credentials.of(stored)
            if stored.status == ACTIVE and (
                    (stale is not None and stored.generation != stale)
                    or (stale is None and not current.expiring(now, self.margin))):
                return current  # another process refreshed it meanwhile
            refresh_token = stored.refresh_token()
            user_type = "Company" if stored.token_kind == AGENCY else "Location"
            try:
                grant = self.oauth.refresh(refresh_token, user_type=user_type)
            except OAuthError as exc:
                status = retry_at = None
                if exc.kind == INVALID_GRANT:
                    status = INVALID  # the refresh token is dead: the location reinstalls
                elif exc.kind == LOCATION_INACTIVE:  # keep it: works once reactivated
                    status, retry_at = INACTIVE, now + INACTIVE_RETRY
                row.mark(message=exc.message, now=now, status=status, retry_at=retry_at)
                # Still usable until it expires when the failure was passing.
                if (stored.status != ACTIVE or status is not None
                        or current.expiring(now, dt.timedelta(0))):
                    return None
                return current
            return Credentials.of(row.renew(
                access_token=grant.access_token,
                refresh_token=grant.refresh_token or refresh_token,
                expires_at=expiry(grant.expires_in, now=now), now=now))

    def _mint(self, location_id: str, *, now: dt.datetime,
              company_id: str | None = None) -> Credentials | None:
        """Mint a location token with the agency token of the location's company."""
        if self.oauth is None:
            return None
        company_id = company_id or installed_company(self.vault.engine, location_id)
        if company_id is None or company_id == location_id:
            return None
        company = self._get(company_id, self.vault.read(company_id), now=now)
        if company is None or company.token_kind != AGENCY:
            return None
        try:
            grant = self.oauth.location_token(company.access_token, company_id=company_id,
                                              location_id=location_id)
        except OAuthError as exc:
            logger.warning("token.mint_failed", extra={"location_id": location_id,
                                                       "kind": exc.kind, "error": exc.message})
            return None
        # Minting twice is harmless (nothing single-use is spent), so no lock here.
        self.vault.set_token(location_id, access_token=grant.access_token, now=now,
                             expires_at=expiry(grant.expires_in, now=now), company_id=company_id,
                             token_kind=MINTED)
        logger.info("token.minted", extra={"location_id": location_id,
                                           "company_id": company_id})
        stored = self.vault.read(location_id)
        return None if stored is None or stored.status != ACTIVE else Credentials.of(stored)
