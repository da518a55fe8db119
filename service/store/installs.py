"""Where the HighLevel app is installed (``installs``), and what INSTALL / UNINSTALL do to the
store. No Flask here.

An OAuth install (its grant turned into a token by the token policy,
service/forward/credentials.py) is written with ``record_oauth_install``: the token, the
install rows and the views it releases, in one transaction. An app webhook, once verified
and parsed (service/ingest/app_webhooks.py), is applied with ``apply``: its effect and its
receipt (``webhook_receipts``, the replay guard) are written in one transaction, so a
repeated ``webhookId`` changes nothing and a failed effect leaves no receipt behind.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import documents as states
from .db import documents, installs, locations, webhook_receipts
from .engine import dialect_insert, read_only
from .tokens import NewToken, TokenVault

# The webhook.* log lines keep the logger they have always been written under.
logger = logging.getLogger("service.webhooks")

INSTALL, UNINSTALL = "INSTALL", "UNINSTALL"
LOCATION, COMPANY = "location", "company"
INSTALLED, UNINSTALLED = "installed", "uninstalled"
# Receipts only need to outlive the tolerance window; a day leaves a wide margin.
RECEIPT_TTL = dt.timedelta(days=1)


@dataclass(frozen=True)
class AppEvent:
    """A verified, well-formed INSTALL or UNINSTALL."""

    type: str  # INSTALL | UNINSTALL
    webhook_id: str
    timestamp: dt.datetime
    target_type: str  # location | company
    target_id: str
    company_id: str | None = None
    # A company (bulk) install lists the locations it covers.
    location_ids: tuple[str, ...] = ()


def apply(engine: Engine, event: AppEvent, *, now: dt.datetime) -> dict:
    """Record the receipt and apply the event in one transaction; return ``{"status"}``.

    A ``webhookId`` already received answers ``duplicate`` and changes nothing.
    """
    with engine.begin() as conn:
        conn.execute(webhook_receipts.delete().where(
            webhook_receipts.c.received_at < now - RECEIPT_TTL))
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
        fresh = conn.execute(
            dialect_insert(webhook_receipts, conn.dialect.name)
            .values(webhook_id=event.webhook_id, received_at=now)
            .on_conflict_do_nothing(index_elements=["webhook_id"])
            .returning(webhook_receipts.c.webhook_id)).first()
        if fresh is None:
            logger.info("webhook.duplicate", extra={"webhook_id": event.webhook_id})
            return {"status": "duplicate"}
        if event.type == INSTALL:
            _install(conn, event, now)
            logger.info("webhook.install", extra={
                "target_type": event.target_type, "target_id": event.target_id,
                "company_id": event.company_id, "locations": len(event.location_ids)})
            return {"status": INSTALLED}
        removed, parked = _uninstall(conn, event, now)
        logger.info("webhook.uninstall", extra={
            "target_type": event.target_type, "target_id": event.target_id,
            "tokens_removed": removed, "views_parked": parked})
        return {"status": UNINSTALLED}


def record_oauth_install(vault: TokenVault, token: NewToken, *,
                         installed: Sequence[tuple[str, str]], company_id: str | None,
                         release: Sequence[str], now: dt.datetime) -> None:
    """Store an OAuth install in one transaction: ``token``, an ``installed`` row for each
    (target type, id), and the parked views of the ``release`` locations made due again
    (where they can now be sent). However many locations an agency approved, one commit."""
    with vault.engine.begin() as conn:
        vault.write(conn, token, now=now)
        for target_type, target_id in installed:
            upsert_install(conn, target_type, target_id, company_id, INSTALLED, now)
        for location_id in release:
            states.unpark(conn, now=now, location_id=location_id)


def installed_company(engine: Engine, location_id: str) -> str | None:
    """Return the company under which a location has the app installed (None: none)."""
    i = installs.c
    with read_only(engine) as conn:
        return conn.execute(sa.select(i.company_id).where(
            i.target_type == LOCATION, i.target_id == location_id,
            i.status == INSTALLED)).scalar()


def _install(conn: sa.Connection, event: AppEvent, now: dt.datetime) -> None:
    upsert_install(conn, event.target_type, event.target_id, event.company_id, INSTALLED, now)
    for location_id in event.location_ids:
        upsert_install(conn, LOCATION, location_id, event.company_id, INSTALLED, now)


def _uninstall(conn: sa.Connection, event: AppEvent, now: dt.datetime) -> tuple[int, int]:
    """Remove the tokens, park the views and mark the install gone; return (tokens, views)."""
    i, d = installs.c, documents.c
    if event.target_type == LOCATION:
        targets = d.location_id == event.target_id
        tokens = locations.c.location_id == event.target_id
    else:
        # The agency's own token (stored under its company id) and every location whose
        # install row names the agency; a subquery, however many locations it has.
        members = sa.select(i.target_id).where(i.target_type == LOCATION,
                                               i.company_id == event.target_id)
        targets = sa.or_(d.location_id == event.target_id, d.location_id.in_(members))
        tokens = sa.or_(locations.c.location_id == event.target_id,
                        locations.c.location_id.in_(members))
    removed = conn.execute(locations.delete().where(tokens)).rowcount
    parked = states.park(conn, targets, now=now)  # in this transaction
    if event.target_type == COMPANY:
        conn.execute(installs.update().where(i.target_type == LOCATION,
                                             i.company_id == event.target_id)
                     .values(status=UNINSTALLED, updated_at=now))
    upsert_install(conn, event.target_type, event.target_id, event.company_id, UNINSTALLED,
                   now)
    return removed, parked


def upsert_install(conn: sa.Connection, target_type: str, target_id: str,
                   company_id: str | None, status: str, now: dt.datetime) -> None:
    """Record a location's or company's install status (``installed`` or ``uninstalled``)."""
    changes = {"status": status, "updated_at": now}
    if company_id is not None:  # an UNINSTALL often omits it: keep what INSTALL said
        changes["company_id"] = company_id
    conn.execute(
        dialect_insert(installs, conn.dialect.name)
        .values(target_type=target_type, target_id=target_id, company_id=company_id,
                status=status, updated_at=now)
        .on_conflict_do_update(index_elements=["target_type", "target_id"], set_=changes))
