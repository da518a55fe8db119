"""Email providers' webhooks as sources: ``POST /v1/sources/<provider>``.

Each view checks the request's signature (``signatures/``, with the verifiers configured in
``source_verifiers.py``), parses the payload into views (``sources.py``), stores them in one
transaction and answers 200: providers retry
anything else for hours, so an open event without our ids is counted and logged
(``source.unroutable``), not refused. A bad signature is 401, an unreadable payload 400.
A source whose setting is unset answers 503 naming the setting: the provider keeps
retrying while the operator sets it, so no open is lost to a missing key.

``POST /v1/sources/internal`` takes the body of ``POST /v1/events`` signed the Standard
Webhooks way instead of a bearer key.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter

import marshmallow as ma
from flask import g, request

from ..ingest.signatures import (
    CertificateUnavailableError,
    MailgunVerifier,
    MalformedMessageError,
    SendGridVerifier,
    SignatureError,
    SnsVerifier,
    StandardWebhookVerifier,
    TopicNotAllowedError,
)
from ..ingest.source_verifiers import SETTINGS, Sources
from ..ingest.sources import (
    Context,
    Parsed,
    PayloadError,
    event_key,
    load_json,
    parse_mailgun,
    parse_postmark,
    parse_sendgrid,
    parse_ses,
)
from ..metrics import observe_ingest
from .bodies import Blueprint
from .deps import services
from .errors import ServiceError
from .events import require_json, to_view
from .schemas import INGEST_BODY, IngestResponseSchema, IngestSchema

logger = logging.getLogger(__name__)

bp = Blueprint("sources", __name__, url_prefix="/v1/sources",
               description="Open events from email providers' webhooks, and signed internal "
                           "events")


class SignatureRejectedError(ServiceError):
    status = 401
    message = "The request is not signed by this source"


class UnreadablePayloadError(ServiceError):
    status = 400
    message = "The payload cannot be read"


class TopicNotAllowedHttpError(ServiceError):
    status = 403
    message = "The SNS topic is not in SES_TOPIC_ARNS"


class SourceNotConfiguredError(ServiceError):
    status = 503
    message = "This source is not configured"


class SourceUnavailableError(ServiceError):
    status = 503
    message = "Cannot verify the message right now; retry later"
    headers = {"Retry-After": "30"}


class SourceResultSchema(ma.Schema):
    """What became of a webhook's events."""

    views = ma.fields.Integer(metadata={"description": "open events recorded as views"})
    queued = ma.fields.Integer(metadata={"description": "views that will reach HighLevel"})
    filtered = ma.fields.Integer(metadata={"description": "machine opens kept, not forwarded"})
    duplicate = ma.fields.Integer(metadata={"description": "events seen before"})
    unroutable = ma.fields.Integer(metadata={"description": "opens without our ids: counted"})
    ignored = ma.fields.Integer(metadata={"description": "events other than opens"})
    message = ma.fields.String(metadata={"description": "for an SNS subscription handshake"})


def current_sources() -> Sources:
    return services().sources


def configured(name: str):
    """The source's verifier; 503 naming its setting when it is not configured."""
    verifier = getattr(current_sources(), name)
    if verifier is None:
        raise SourceNotConfiguredError(
            f"The {name} source is not configured: set {SETTINGS[name]}")
    return verifier


def source(name: str):
    """Decorate a source's view: map verification and payload errors to 401/403/400/503."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except SignatureError as exc:
                logger.info("source.rejected", extra={"provider": name, "reason": str(exc)})
                error = SignatureRejectedError(str(exc))
                if name == "postmark":
                    error.headers["WWW-Authenticate"] = 'Basic realm="relay"'
                raise error from None
            except TopicNotAllowedError as exc:
                logger.info("source.rejected", extra={"provider": name, "reason": str(exc)})
                raise TopicNotAllowedHttpError() from exc
            except (PayloadError, MalformedMessageError) as exc:
                logger.info("source.rejected", extra={"provider": name, "reason": str(exc)})
                raise UnreadablePayloadError(str(exc)) from None
            except CertificateUnavailableError as exc:
                logger.warning("source.certificate_unavailable",
                               extra={"provider": name, "reason": str(exc)})
                raise SourceUnavailableError() from None

        return wrapped

    return decorator


def _context() -> Context:
    svc = services()
    return Context(classifier=svc.classifier, machine_opens=svc.config["MACHINE_OPENS"],
                   now=svc.clock(), request_id=g.get("request_id"))


def record(provider: str, parsed: Parsed, ctx: Context) -> dict:
    """Store the views in one transaction; count and log the unroutable ones."""
    sources = current_sources()
    accepted = services().store.record_views(parsed.views, now=ctx.now) if parsed.views else []
    observe_ingest(parsed.views, accepted, source=provider)
    for item in parsed.unroutable:
        total = sources.count_unroutable(provider)
        logger.info("source.unroutable", extra={"provider": provider, "reason": item.reason,
                                                "event_key": item.event_key,
                                                "unroutable_total": total})
    statuses = Counter(a.status for a in accepted)
    result = {"views": len(accepted), "queued": statuses["queued"],
              "filtered": statuses["filtered"], "duplicate": statuses["duplicate"],
              "unroutable": len(parsed.unroutable), "ignored": parsed.ignored}
    logger.info("source.received", extra={"provider": provider, **result})
    return result


DOC = {"security": [], "responses": {
    "400": {"description": "The payload cannot be read"},
    "401": {"description": "Bad, stale or reused signature"},
    "503": {"description": "Source not configured (the response names the setting)"}}}


@bp.route("/sendgrid", methods=["POST"])
@bp.doc(summary="SendGrid Event Webhook", **DOC)
@source("sendgrid")
@bp.response(200, SourceResultSchema)
def sendgrid():
    """SendGrid's signed Event Webhook: ``open`` events carrying our ``custom_args``."""
    verifier: SendGridVerifier = configured("sendgrid")
    ctx, body = _context(), request.get_data()
    verifier.verify(body, signature=request.headers.get(verifier.SIGNATURE_HEADER),
                    timestamp=request.headers.get(verifier.TIMESTAMP_HEADER), now=ctx.now)
    return record("sendgrid", parse_sendgrid(body, ctx), ctx)


@bp.route("/mailgun", methods=["POST"])
@bp.doc(summary="Mailgun webhook (opened)", **DOC)
@source("mailgun")
@bp.response(200, SourceResultSchema)
def mailgun():
    """Mailgun's ``opened`` webhook (JSON), ids in ``user-variables``; each token once."""
    verifier: MailgunVerifier = configured("mailgun")
    ctx = _context()
    document = load_json(request.get_data())
    if not isinstance(document, dict):
        raise PayloadError("Expected a Mailgun webhook (a JSON object)")
    token = verifier.verify(document.get("signature"), now=ctx.now)
    parsed = parse_mailgun(document, ctx)
    tokens = current_sources().tokens
    if not tokens.claim("mailgun", token, now=ctx.now):
        raise SignatureError("The signature's token was already used")
    try:
        return record("mailgun", parsed, ctx)
    except Exception:
        tokens.release("mailgun", token)  # not stored: Mailgun's retry must be accepted
        raise


@bp.route("/postmark", methods=["POST"])
@bp.doc(summary="Postmark Open webhook", **DOC)
@source("postmark")
@bp.response(200, SourceResultSchema)
def postmark():
    """Postmark's Open webhook, authenticated by the HTTP Basic credentials in its URL."""
    configured("postmark").verify(request.headers.get("Authorization"))
    ctx = _context()
    return record("postmark", parse_postmark(request.get_data(), ctx), ctx)


@bp.route("/ses", methods=["POST"])
@bp.doc(summary="Amazon SES open events through SNS", **DOC)
@source("ses")
@bp.response(200, SourceResultSchema)
def ses():
    """An SNS message (sent as ``text/plain``): an SES event, or the subscription handshake.

    A ``SubscriptionConfirmation`` is logged with its ``SubscribeURL`` for an operator to
    visit; the service does not call it.
    """
    verifier: SnsVerifier = configured("ses")
    ctx = _context()
    message = load_json(request.get_data())
    if not isinstance(message, dict):
        raise PayloadError("Expected an SNS message (a JSON object)")
    verifier.verify(message, now=ctx.now)
    if message["Type"] != "Notification":
        logger.warning("source.ses.subscription", extra={
            "sns_type": message["Type"], "topic_arn": message["TopicArn"],
            "subscribe_url": message.get("SubscribeURL")})
        return {"views": 0, "queued": 0, "filtered": 0, "duplicate": 0, "unroutable": 0,
                "ignored": 0, "message": f"{message['Type']} logged: an operator confirms "
                                         "it by visiting its SubscribeURL"}
    return record("ses", parse_ses(message, ctx), ctx)


def require_standard_webhook(view):
    """Decorate a view so it needs a Standard Webhooks signature (``webhook-id`` kept in g)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        verifier: StandardWebhookVerifier = configured("internal")
        g.webhook_id = verifier.verify(request.get_data(), request.headers,
                                       now=services().clock())
        return view(*args, **kwargs)

    return wrapped


@bp.route("/internal", methods=["POST"])
@bp.doc(summary="Events from internal services, signed (Standard Webhooks)", security=[],
        requestBody=INGEST_BODY,
        responses={"401": {"description": "Bad or stale signature"},
                   "503": {"description": "INTERNAL_WEBHOOK_SECRETS is not set"}})
@source("internal")
@require_standard_webhook
@require_json
@bp.arguments(IngestSchema)
@bp.response(202, IngestResponseSchema)
def internal(body):
    """The body of ``POST /v1/events``, signed with ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature`` instead of a bearer key.

    ``webhook-id`` is the idempotency key (with the event's index in a batch); an event's
    own ``eventId``, when given, is its key as on ``/v1/events``.
    """
    batch = "events" in request.get_json()
    views = []
    for i, event in enumerate(body["events"]):
        raw = f"{g.webhook_id}:{i}" if batch else g.webhook_id
        views.append(dataclasses.replace(
            to_view(event), source="internal",
            event_key=event.get("eventId") or event_key("internal", raw)))
    accepted = services().store.record_views(views, now=services().clock())
    observe_ingest(views, accepted, source="internal")
    results = [{"id": a.id, "status": a.status} for a in accepted]
    return {"events": results} if batch else results[0]
