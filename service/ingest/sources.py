"""Email providers' open events as views: each provider's payload parsed into ``View``s.

The email that carries an invoice also carries our ids in the provider's message metadata
(``locationId`` and ``invoiceId`` or ``estimateId``); the provider calls a webhook when the
message is opened. Each parser takes a payload whose signature was already checked
(``signatures/``) and returns the views to store, the open events it could not route to a
document (no ids, or malformed ones: counted, never forwarded, not an error to the
provider), and how many other events (deliveries, clicks...) it ignored. No Flask here.

Documented payloads these follow:
- SendGrid: https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
  (custom arguments arrive as top-level keys of each event)
- Mailgun: https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads
  and .../tracking-messages/open-click-bot-detect (``client-info.bot``)
- Postmark: https://postmarkapp.com/developer/webhooks/open-tracking-webhook
- Amazon SES: https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-examples.html
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import safejson
from ..ids import is_valid_id
from ..store.queue import View
from .verdicts import Classifier, Verdict
from .views import build_view

MAX_EVENT_KEY = 64  # events.event_key is VARCHAR(64)
MAX_USER_AGENT = 512
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
# Mailgun's bot detection (client-info.bot): Gmail's image proxy fetches the pixel when the
# message is opened, so it is a real open; Apple MPP prefetches on delivery.
MAILGUN_BOTS = {"apple": "machine_prefetch", "gmail": "proxy_open", "generic": "bot"}


class PayloadError(Exception):
    """The payload cannot be read as the provider's webhook (400)."""


@dataclass(frozen=True)
class Context:
    """What every parser needs besides the payload: how to judge a view, and when it is."""

    classifier: Classifier
    machine_opens: str
    now: dt.datetime
    request_id: str | None = None


@dataclass(frozen=True)
class Unroutable:
    """An open event that names no document of ours; counted and logged, never forwarded."""

    reason: str  # missing_ids | invalid_ids | ambiguous_document
    event_key: str | None


@dataclass
class Parsed:
    views: list[View] = field(default_factory=list)
    unroutable: list[Unroutable] = field(default_factory=list)
    ignored: int = 0  # events other than opens


def event_key(prefix: str, raw: str) -> str:
    """``prefix:raw``, or ``prefix~`` and raw's SHA-256 (base64url) when that is too long."""
    key = f"{prefix}:{raw}"
    if len(key) <= MAX_EVENT_KEY:
        return key
    digest = base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=")
    return f"{prefix}~{digest.decode()}"


def route(metadata: object) -> tuple[str, str, str] | str:
    """Find (kind, location, document) in a provider's metadata, or the reason it can't."""
    if not isinstance(metadata, Mapping):
        return "missing_ids"
    values = {}
    for name in ("locationId", "invoiceId", "estimateId"):
        value = metadata.get(name)
        if isinstance(value, list) and len(value) == 1:  # SES tags are lists of values
            value = value[0]
        if value is not None:
            values[name] = value
    if "locationId" not in values or not ({"invoiceId", "estimateId"} & set(values)):
        return "missing_ids"
    if "invoiceId" in values and "estimateId" in values:
        return "ambiguous_document"
    if not all(is_valid_id(v) for v in values.values()):
        return "invalid_ids"
    kind = "invoice" if "invoiceId" in values else "estimate"
    return kind, values["locationId"], values.get("invoiceId") or values["estimateId"]


def _when(value: object, ctx: Context) -> dt.datetime:
    """The provider's time of the open (Unix seconds or ISO 8601); ``now`` if unusable."""
    when = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            when = dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            when = None
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    if when is None or when > ctx.now + FUTURE_TOLERANCE:
        return ctx.now
    return when.astimezone(dt.UTC)


def _ip(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _user_agent(value: object) -> str | None:
    return (value[:MAX_USER_AGENT] or None) if isinstance(value, str) else None


def _add(parsed: Parsed, ctx: Context, *, source: str, key: str | None, metadata: object,
         viewed_at: object, user_agent: object, ip: object,
         verdict: Verdict | None = None) -> None:
    """Route one open event and add its view (or its reason for being unroutable)."""
    target = route(metadata)
    if isinstance(target, str):
        parsed.unroutable.append(Unroutable(target, key))
        return
    kind, location_id, document_id = target
    ua, addr = _user_agent(user_agent), _ip(ip)
    parsed.views.append(build_view(
        ctx.classifier, machine_opens=ctx.machine_opens, kind=kind, location_id=location_id,
        document_id=document_id, viewed_at=_when(viewed_at, ctx), event_key=key,
        source=source, user_agent=ua, ip=addr, request_id=ctx.request_id, verdict=verdict))


def load_json(body: bytes) -> object:
    """Parse a webhook body as JSON (``safejson``: nested too deep is not JSON either).

    :raises PayloadError: it is not JSON.
    """
    try:
        return safejson.loads(body)
    except ValueError as exc:
        raise PayloadError(str(exc)) from None


def parse_sendgrid(body: bytes, ctx: Context) -> Parsed:
    """SendGrid's Event Webhook: a JSON array of events; ``open`` events become views.

    Ids come from the message's ``custom_args``, which SendGrid adds to each event as
    top-level keys. ``sg_machine_open: true`` (Apple Mail Privacy Protection) is a
    ``machine_prefetch``; otherwise the event's ``useragent`` and ``ip`` are classified.
    """
    events = load_json(body)
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise PayloadError("Expected a JSON array of SendGrid events")
    parsed = Parsed()
    for event in events:
        if event.get("event") != "open":
            parsed.ignored += 1
            continue
        raw_id = event.get("sg_event_id")
        key = event_key("sg", raw_id) if isinstance(raw_id, str) and raw_id else None
        verdict = Verdict("machine_prefetch", "sendgrid:sg_machine_open") \
            if event.get("sg_machine_open") is True else None
        metadata = event if "locationId" in event else event.get("custom_args", event)
        _add(parsed, ctx, source="sendgrid", key=key, metadata=metadata,
             viewed_at=event.get("timestamp"), user_agent=event.get("useragent"),
             ip=event.get("ip"), verdict=verdict)
    return parsed


def parse_mailgun(document: Mapping, ctx: Context) -> Parsed:
    """One Mailgun webhook (``{"signature", "event-data"}``); an ``opened`` event is a view.

    Ids come from ``user-variables`` (``v:locationId`` when sending). ``client-info.bot``
    decides the verdict when Mailgun detected a bot; otherwise ``client-info.user-agent``
    and ``ip`` are classified.
    """
    data = document.get("event-data")
    if not isinstance(data, dict):
        raise PayloadError("Expected a Mailgun webhook with event-data")
    parsed = Parsed()
    if data.get("event") != "opened":
        parsed.ignored += 1
        return parsed
    raw_id = data.get("id")
    key = event_key("mg", raw_id) if isinstance(raw_id, str) and raw_id else None
    client = data.get("client-info") if isinstance(data.get("client-info"), dict) else {}
    bot = client.get("bot")
    verdict = Verdict(MAILGUN_BOTS[bot], f"mailgun:bot={bot}") if bot in MAILGUN_BOTS else None
    _add(parsed, ctx, source="mailgun", key=key, metadata=data.get("user-variables"),
         viewed_at=data.get("timestamp"), user_agent=client.get("user-agent"),
         ip=data.get("ip"), verdict=verdict)
    return parsed


def parse_postmark(body: bytes, ctx: Context) -> Parsed:
    """Postmark's Open webhook (one open per request, ``RecordType: "Open"``).

    Ids come from ``Metadata``; the dedup key is ``MessageID`` + ``ReceivedAt`` (one per
    open when the webhook posts every open, not only the first).
    """
    document = load_json(body)
    if not isinstance(document, dict):
        raise PayloadError("Expected a JSON object from Postmark")
    parsed = Parsed()
    if document.get("RecordType") != "Open":
        parsed.ignored += 1
        return parsed
    message_id, received = document.get("MessageID"), document.get("ReceivedAt")
    key = event_key("pm", f"{message_id}:{received}") \
        if isinstance(message_id, str) and isinstance(received, str) else None
    geo = document.get("Geo") if isinstance(document.get("Geo"), dict) else {}
    _add(parsed, ctx, source="postmark", key=key, metadata=document.get("Metadata"),
         viewed_at=received, user_agent=document.get("UserAgent"), ip=geo.get("IP"))
    return parsed


def parse_ses(notification: Mapping, ctx: Context) -> Parsed:
    """An SNS ``Notification`` whose ``Message`` is an SES event; ``Open`` becomes a view.

    Ids come from the message tags (``mail.tags``, set as SES message tags or through the
    configuration set); the dedup key is the SNS ``MessageId``, which SNS keeps on retries.
    """
    message = notification.get("Message")
    event = load_json(message.encode()) if isinstance(message, str) else None
    if not isinstance(event, dict):
        raise PayloadError("The SNS Message is not an SES event (JSON object)")
    parsed = Parsed()
    if (event.get("eventType") or event.get("notificationType")) != "Open":
        parsed.ignored += 1
        return parsed
    mail = event.get("mail") if isinstance(event.get("mail"), dict) else {}
    opened = event.get("open") if isinstance(event.get("open"), dict) else {}
    raw_id = notification.get("MessageId")
    key = event_key("ses", raw_id) if isinstance(raw_id, str) and raw_id else None
    _add(parsed, ctx, source="ses", key=key, metadata=mail.get("tags"),
         viewed_at=opened.get("timestamp"), user_agent=opened.get("userAgent"),
         ip=opened.get("ipAddress"))
    return parsed
