"""``POST /webhooks/highlevel``: HighLevel's app INSTALL and UNINSTALL webhooks.

The body is read raw and its signature checked before anything is parsed (service/webhooks.py
does the work). HighLevel retries a delivery only when it is answered 429, so a duplicate or
an event type we do not handle is answered 200, never an error, and a store that cannot be
reached is answered 429 here (not the app-wide 503, which HighLevel would drop for good).
"""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import request
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..ingest import app_webhooks as webhooks
from .bodies import Blueprint
from .deps import services
from .errors import ServiceError, StoreUnavailableError

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks",
               description="Webhooks from HighLevel's marketplace app")
STATUS = {webhooks.SignatureError: 401, webhooks.StaleError: 401, webhooks.MalformedError: 400}


class WebhookResultSchema(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(  # dump only: documents the values
        ("installed", "uninstalled", "duplicate", "ignored")))


class WebhookRejectedError(ServiceError):
    def __init__(self, error: webhooks.WebhookError):
        super().__init__(str(error))
        self.status = STATUS.get(type(error), 400)


class WebhooksNotConfiguredError(ServiceError):
    status = 503
    message = f"{webhooks.SETTING} is not configured"


class StoreBusyError(StoreUnavailableError):
    """The store is down: 429, the only answer HighLevel retries (every 10 minutes, six
    times: https://help.gohighlevel.com/support/solutions/articles/155000007071)."""

    status = 429
    headers = {"Retry-After": "600"}  # HighLevel's own retry interval


@bp.route("/highlevel", methods=["POST"])
@bp.doc(summary="HighLevel app INSTALL / UNINSTALL", description=(
    "Signed by HighLevel: `x-ghl-signature` (Ed25519 over the raw body, verified with "
    "HIGHLEVEL_WEBHOOK_PUBLIC_KEY) or the legacy `x-wh-signature` (RSA-SHA256). "
    "`timestamp` must be within 5 minutes of the service's clock; a repeated `webhookId` "
    "answers `duplicate` and changes nothing. INSTALL records the location or company; "
    "UNINSTALL removes its tokens (a company's: its own and its locations') and parks "
    "their views. Other event types answer `ignored`."),
    parameters=[{"in": "header", "name": name, "schema": {"type": "string"},
                 "description": what} for name, what in (
        ("x-ghl-signature", "base64 Ed25519 signature of the raw body"),
        ("x-wh-signature", "legacy: base64 RSA-SHA256 signature of the raw body"))],
    requestBody={"required": True, "content": {"application/json": {
        "schema": {"type": "object"}}}})
@bp.response(200, WebhookResultSchema)
@bp.alt_response(400, description="Not JSON, or a field missing or malformed")
@bp.alt_response(401, description="Unsigned, badly signed, or timestamp not fresh")
@bp.alt_response(429, description="The store is unavailable: HighLevel retries later")
@bp.alt_response(503, description="HIGHLEVEL_WEBHOOK_PUBLIC_KEY is not configured")
def highlevel():
    receiver = services().app_webhooks
    if receiver is None:
        raise WebhooksNotConfiguredError()
    svc = services()
    try:
        return receiver.receive(svc.engine, request.get_data(),
                                ghl_signature=request.headers.get("x-ghl-signature"),
                                wh_signature=request.headers.get("x-wh-signature"),
                                now=svc.clock())
    except webhooks.WebhookError as error:
        logger.warning("webhook.rejected", extra={"reason": error.reason})
        raise WebhookRejectedError(error) from None
    except (OperationalError, PoolTimeout, StoreUnavailableError) as error:
        # Nothing was applied (receipt and effect are one transaction): the retry is safe.
        logger.error("store.unavailable", extra={"error": type(error).__name__})
        raise StoreBusyError() from None
