"""Prove that a webhook comes from the source it claims: one verifier per email provider.

Each ``verify`` raises ``SignatureError`` (answered 401) when the request is not signed by
the source, or is signed but stale or already used. Times come in as ``now`` (the app's
clock), so tests drive them. Comparisons of secrets are constant-time; public-key checks
use ``cryptography``. No Flask here.

- SendGrid: ECDSA P-256 / SHA-256 over ``timestamp + raw body``
  (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features).
- Mailgun: HMAC-SHA256 hex over ``timestamp + token`` with the webhook signing key; a token
  is accepted once (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks).
- Postmark: no signature; HTTP Basic credentials in the webhook URL
  (https://postmarkapp.com/developer/webhooks/webhooks-overview).
- Amazon SNS (carrying SES events): RSA PKCS#1 v1.5 with SHA1 (SignatureVersion 1) or SHA256
  (2) over the message's canonical string, with the certificate at ``SigningCertURL``
  (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).
- Internal services: Standard Webhooks (https://www.standardwebhooks.com/).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from standardwebhooks import Webhook

from .db import used_webhook_tokens

UTC = dt.UTC
# Standard Webhooks' tolerance, fixed by its spec (and by the package's own verify).
STANDARD_WEBHOOKS_TOLERANCE = 300
# SNS gives up on an HTTP/S endpoint after at most 3,600 s of retries (a hard limit), so a
# notification published longer ago than that (plus clock skew) can only be a replay.
SNS_MAX_AGE = 3600 + 300
SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
# The fields of each SNS message type that are signed, in the order they are signed.
SNS_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1,
                                                             "2": hashes.SHA256}


class SignatureError(Exception):
    """Not signed by the source, or signed but stale or already used (401)."""


class TopicNotAllowedError(Exception):
    """An SNS message from a topic not listed in ``SES_TOPIC_ARNS`` (403)."""


class CertificateUnavailableError(Exception):
    """The SNS signing certificate cannot be had right now (503: SNS retries)."""


class MalformedMessageError(Exception):
    """The message lacks what its signature scheme needs (400)."""


def _check_age(timestamp: float, now: dt.datetime, *, max_age: float,
               max_ahead: float) -> None:
    age = now.timestamp() - timestamp
    if age > max_age:
        raise SignatureError("The signature's timestamp is too old")
    if -age > max_ahead:
        raise SignatureError("The signature's timestamp is in the future")


def _unix_seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SignatureError("The signature's timestamp is not a Unix time") from None
    if seconds != seconds or abs(seconds) > 1e11:  # NaN, or beyond year 5000
        raise SignatureError("The signature's timestamp is not a Unix time")
    return seconds


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("The signature is not valid base64") from None


# -- SendGrid ------------------------------------------------------------------------------

class SendGridVerifier:
    """SendGrid's Signed Event Webhook: ECDSA P-256 over the timestamp header and the body."""

    SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
    TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

    def __init__(self, public_key: str, *, tolerance: float):
        """``public_key``: the verification key from SendGrid's Mail Settings (base64 DER), or PEM.

        :raises ValueError: it is not an EC P-256 public key.
        """
        text = public_key.strip()
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error, TypeError) as exc:
            raise ValueError(f"not a public key (base64 DER or PEM): {exc}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("not an ECDSA P-256 public key")
        self.key = key
        self.tolerance = tolerance

    def verify(self, body: bytes, *, signature: str | None, timestamp: str | None,
               now: dt.datetime) -> None:
        """Check the headers against the raw body.

        :raises SignatureError: a header is missing, the signature does not match, or the
            timestamp is more than ``tolerance`` seconds from ``now``.
        """
        if not signature or not timestamp:
            raise SignatureError(f"Missing {self.SIGNATURE_HEADER} or {self.TIMESTAMP_HEADER}")
        seconds = _unix_seconds(timestamp)
        try:
            self.key.verify(_b64decode(signature.strip()), timestamp.encode() + body,
                            ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError("The signature does not match the body") from None
        _check_age(seconds, now, max_age=self.tolerance, max_ahead=self.tolerance)


# -- Mailgun -------------------------------------------------------------------------------

class MailgunVerifier:
    """Mailgun's webhook signature: HMAC-SHA256 of ``timestamp + token``, in the body.

    The signature covers the timestamp and token only, not the event, so a captured
    signature could carry a forged event: each token is accepted once (``UsedTokens``).
    """

    def __init__(self, signing_key: str, *, tolerance: float):
        if not signing_key.strip():
            raise ValueError("the signing key is empty")
        self.key = signing_key.strip().encode()
        self.tolerance = tolerance

    def verify(self, signature: object, *, now: dt.datetime) -> str:
        """Check the body's ``signature`` object; return its token (to be claimed once).

        A subaccount's event also carries ``parent-signature``, made with the primary
        account's key: either one matching is enough.

        :raises SignatureError: missing fields, no match, or a stale timestamp.
        """
        if not isinstance(signature, Mapping):
            raise SignatureError("Missing the signature object")
        token, timestamp = signature.get("token"), signature.get("timestamp")
        if not isinstance(token, str) or not token or isinstance(timestamp, bool) or \
                not isinstance(timestamp, str | int):
            raise SignatureError("The signature lacks its token or timestamp")
        timestamp = str(timestamp)
        expected = hmac.new(self.key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        found = False
        for field in ("signature", "parent-signature"):
            presented = signature.get(field)
            if isinstance(presented, str):
                found |= hmac.compare_digest(expected.encode(), presented.lower().encode())
        if not found:
            raise SignatureError("The signature does not match")
        _check_age(_unix_seconds(timestamp), now, max_age=self.tolerance,
                   max_ahead=self.tolerance)
        return token


class UsedTokens:
    """Signature tokens already accepted (``used_webhook_tokens``), remembered long enough
    that a replay is either refused here or stale anyway."""

    def __init__(self, engine: Engine, *, keep_seconds: float):
        self.engine = engine
        self.keep = dt.timedelta(seconds=keep_seconds)

    @staticmethod
    def _digest(source: str, token: str) -> str:
        return hashlib.sha256(f"{source}:{token}".encode()).hexdigest()

    def claim(self, source: str, token: str, *, now: dt.datetime) -> bool:
        """Record ``token`` as used; False if it was already (a replay)."""
        t = used_webhook_tokens
        try:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(t.c.seen_at < now - self.keep))
                conn.execute(t.insert().values(token=self._digest(source, token), seen_at=now))
        except IntegrityError:
            return False
        return True

    def release(self, source: str, token: str) -> None:
        """Forget a claimed token whose event could not be stored, so a retry is accepted."""
        t = used_webhook_tokens
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.token == self._digest(source, token)))


# -- Postmark ------------------------------------------------------------------------------

class BasicCredentials:
    """HTTP Basic credentials that Postmark sends from the webhook URL (``user:password@``)."""

    def __init__(self, credentials: str):
        user, sep, password = credentials.partition(":")
        if not sep or not user or not password:
            raise ValueError("expected user:password")
        self.expected = credentials.encode()

    def verify(self, authorization: str | None) -> None:
        """Check an ``Authorization: Basic ...`` header in constant time.

        :raises SignatureError: missing, malformed or wrong credentials.
        """
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            raise SignatureError("Missing HTTP Basic credentials")
        try:
            presented = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("Malformed HTTP Basic credentials") from None
        if not hmac.compare_digest(presented, self.expected):
            raise SignatureError("Wrong HTTP Basic credentials")


# -- Amazon SNS ----------------------------------------------------------------------------

def check_certificate_url(url: object) -> str:
    """Return ``url`` if it can only be an SNS signing certificate: https, on
    ``sns.<region>.amazonaws.com`` (or ``.amazonaws.com.cn``), a ``.pem`` path.

    :raises SignatureError: anything else (never fetched: a forged message could point
        anywhere, including at the service's own network).
    """
    if not isinstance(url, str):
        raise SignatureError("SigningCertURL is missing")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SignatureError("SigningCertURL is not a URL") from None
    if (parts.scheme != "https" or not SNS_HOST.fullmatch(parts.hostname or "")
            or port not in (None, 443) or parts.username or parts.password
            or not parts.path.endswith(".pem") or parts.query or parts.fragment):
        raise SignatureError("SigningCertURL is not an Amazon SNS certificate URL")
    return url


def http_download(session, *, timeout: float | tuple[float, float] = (3.05, 5.0)):
    """A ``download(url) -> bytes`` over a requests session, with a timeout (production)."""

    def download(url: str) -> bytes:
        resp = session.get(url, timeout=timeout, allow_redirects=False)
        resp.raise_for_status()
        return resp.content

    return download


class CertificateFetcher:
    """SNS signing certificates' public keys, fetched once per URL through ``download`` and
    cached in memory. Only allow-listed URLs are fetched. Tests pass a fake ``download``.

    Trust in a certificate comes from where it was fetched: an AWS host over HTTPS, whose
    TLS certificate requests verifies, without redirects. Its own chain is not checked.
    """

    def __init__(self, download: Callable[[str], bytes], *, cache_size: int = 32):
        self.download = download
        self.cache_size = cache_size
        self._cache: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._lock = threading.Lock()

    def public_key(self, url: object, *, now: dt.datetime) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at ``url``.

        :raises SignatureError: the URL is not allowed, or the certificate is not an RSA
            certificate valid at ``now``.
        :raises CertificateUnavailableError: it could not be fetched or read.
        """
        url = check_certificate_url(url)
        with self._lock:
            cert = self._cache.get(url)
        if cert is None:
            try:
                cert = x509.load_pem_x509_certificate(self.download(url))
            except ValueError as exc:
                raise CertificateUnavailableError(f"The SNS certificate is unreadable: {exc}") \
                    from None
            except Exception as exc:  # requests' errors, timeouts: SNS will retry
                raise CertificateUnavailableError(
                    f"The SNS certificate could not be fetched: {type(exc).__name__}") from None
            with self._lock:
                self._cache[url] = cert
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureError("The SNS signing certificate is not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError("The SNS signing certificate has no RSA key")
        return key


def sns_string_to_sign(message: Mapping[str, object]) -> bytes:
    """The canonical string SNS signs: ``Name\\nvalue\\n`` for each signed field present.

    :raises MalformedMessageError: an unknown ``Type``, or a required field missing.
    """
    fields = SNS_SIGNED_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if fields is None:
        raise MalformedMessageError("Unknown SNS message Type")
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue  # optional, and signed only when present
        if not isinstance(value, str):
            raise MalformedMessageError(f"The SNS message has no {name}")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def _iso_seconds(value: object) -> float:
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError("The SNS Timestamp is not ISO 8601") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class SnsVerifier:
    """Amazon SNS messages from the allowed topics only, signed by SNS."""

    def __init__(self, topic_arns: list[str], certificates: CertificateFetcher, *,
                 max_age: float = SNS_MAX_AGE, max_ahead: float = 300):
        if not topic_arns:
            raise ValueError("no topic ARNs")
        for arn in topic_arns:
            if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+", arn):
                raise ValueError(f"{arn!r} is not an SNS topic ARN")
        self.topics = frozenset(topic_arns)
        self.certificates = certificates
        self.max_age = max_age
        self.max_ahead = max_ahead

    def verify(self, message: Mapping[str, object], *, now: dt.datetime) -> None:
        """Check topic, signature and age of a parsed SNS message.

        The topic is checked first: anyone can subscribe an endpoint to their own topic,
        and SNS signs those messages too.

        :raises TopicNotAllowedError: ``TopicArn`` is not one of ours.
        :raises SignatureError: unsupported ``SignatureVersion``, bad certificate URL,
            signature mismatch, or a message older than SNS would still retry.
        :raises MalformedMessageError: a field the signature covers is missing.
        :raises CertificateUnavailableError: the certificate cannot be fetched now.
        """
        if message.get("TopicArn") not in self.topics:
            raise TopicNotAllowedError("The SNS topic is not in SES_TOPIC_ARNS")
        algorithm = SNS_HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise SignatureError("Unsupported SNS SignatureVersion (expected 1 or 2)")
        signed = sns_string_to_sign(message)
        signature = message.get("Signature")
        if not isinstance(signature, str):
            raise SignatureError("The SNS message is not signed")
        key = self.certificates.public_key(message.get("SigningCertURL"), now=now)
        try:
            key.verify(_b64decode(signature), signed, padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise SignatureError("The SNS signature does not match") from None
        _check_age(_iso_seconds(message.get("Timestamp")), now, max_age=self.max_age,
                   max_ahead=self.max_ahead)


# -- Standard Webhooks (internal services) -------------------------------------------------

class StandardWebhookVerifier:
    """Standard Webhooks signatures, any of several secrets (``whsec_...``) while one rotates.

    The ``standardwebhooks`` package decodes the secrets and computes each signature
    (``Webhook.sign``). Its own ``verify`` is not used: it reads the wall clock (this
    service's clock is injected), and a malformed ``webhook-signature`` or a non-UTF-8 body
    makes it raise ``ValueError`` instead of its verification error.
    """

    def __init__(self, secrets: list[str], *, tolerance: float = STANDARD_WEBHOOKS_TOLERANCE):
        if not secrets:
            raise ValueError("no secrets")
        try:
            self.webhooks = [Webhook(secret) for secret in secrets]
        except Exception as exc:  # binascii.Error, or the package's empty-secret error
            raise ValueError(f"each secret must be whsec_ followed by base64 ({exc})") from None
        self.tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: dt.datetime) -> str:
        """Check ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; return the id.

        :raises SignatureError: a header missing, no ``v1`` signature matching any secret,
            or a timestamp more than 5 minutes from ``now``.
        """
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        presented = headers.get("webhook-signature")
        if not (msg_id and timestamp and presented):
            raise SignatureError("Missing webhook-id, webhook-timestamp or webhook-signature")
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise SignatureError("webhook-timestamp is not a Unix time")
        seconds = _unix_seconds(timestamp)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("The signature does not match the body") from None
        signed_at = dt.datetime.fromtimestamp(seconds, UTC)
        expected = [base64.b64decode(wh.sign(msg_id, signed_at, text).partition(",")[2])
                    for wh in self.webhooks]
        found = False
        for entry in presented.split():
            version, _, value = entry.partition(",")
            if version != "v1":
                continue
            try:
                candidate = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
            for digest in expected:
                found |= hmac.compare_digest(digest, candidate)
        if not found:
            raise SignatureError("No webhook-signature matches")
        _check_age(seconds, now, max_age=self.tolerance, max_ahead=self.tolerance)
        return msg_id
