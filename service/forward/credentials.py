"""Fresh credentials for a send: refresh OAuth tokens ahead of expiry, mint location
tokens from an agency token, and renew once after a 401. No Flask here."""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa

from ..clock import expiry
from ..highlevel.oauth import OAuthClient, OAuthError
from ..metrics import observe_refresh
from ..store.db import installs
from ..store.engine import read_only
from ..store.tokens import Credentials, TokenVault

logger = logging.getLogger(__name__)


class TokenProvider:
    """Hands the forwarder a token it can use now, renewing it when it must."""

    def __init__(self, vault: TokenVault, oauth: OAuthClient | None = None, *,
                 margin: dt.timedelta = dt.timedelta(minutes=5)):
        self.vault = vault
        self.oauth = oauth  # None: no OAuth app configured, tokens are used as stored
        self.margin = margin

    def get(self, location_id: str, *, now: dt.datetime) -> Credentials | None:
        """A usable token for the location: its own, refreshed if due, or minted."""
        creds = self.vault.credentials(location_id)
        if creds is None:
            return self._mint(location_id, now=now)
        if self.oauth is None or not creds.expiring(now, self.margin):
            return creds
        if creds.refreshable:
            return self._refresh(location_id, now=now) or (
                None if creds.expiring(now, dt.timedelta(0)) else creds)
        if creds.token_kind == "minted":
            return self._mint(location_id, now=now, company_id=creds.company_id) or creds
        return creds

    def renew(self, creds: Credentials, *, now: dt.datetime) -> Credentials | None:
        """After a 401: a renewed token (new generation), or None if it cannot be renewed."""
        if self.oauth is None:
            return None
        if creds.refreshable:
            renewed = self._refresh(creds.location_id, now=now, stale=creds.generation)
        elif creds.token_kind == "minted":
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
        creds = self.vault.refresh(location_id, now=now, refresher=self.oauth.refresh,
                                   stale_generation=stale, margin=self.margin)
        logger.info("token.refresh", extra={"location_id": location_id,
                                            "ok": creds is not None})
        observe_refresh(creds is not None)
        return creds

    def _mint(self, location_id: str, *, now: dt.datetime,
              company_id: str | None = None) -> Credentials | None:
        """Mint a location token with the agency token of the location's company."""
        if self.oauth is None:
            return None
        company_id = company_id or self._company_of(location_id)
        if company_id is None or company_id == location_id:
            return None
        company = self.get(company_id, now=now)
        if company is None or company.token_kind != "agency":
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
                             token_kind="minted")
        logger.info("token.minted", extra={"location_id": location_id,
                                           "company_id": company_id})
        return self.vault.credentials(location_id)

    def _company_of(self, location_id: str) -> str | None:
        i = installs.c
        with read_only(self.vault.engine) as conn:
            return conn.execute(sa.select(i.company_id).where(
                i.target_type == "location", i.target_id == location_id,
                i.status == "installed")).scalar()
