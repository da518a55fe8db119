"""Amazon SNS messages (carrying SES events): RSA PKCS#1 v1.5 with SHA1 (SignatureVersion 1)
or SHA256 (2) over the message's canonical string, with the certificate at ``SigningCertURL``.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .common import (
    CertificateUnavailableError,
    MalformedMessageError,
    SignatureError,
    TopicNotAllowedError,
    b64decode,
    check_age,
)

# SNS gives up on an HTTP/S endpoint after at most 3,600 s of retries (a hard limit), so a
# notification published longer ago than that (plus clock skew) can only be a replay.
SNS_MAX_AGE = 3600 + 300
# SNS's own endpoint in a region: sns.us-east-1.amazonaws.com, sns.us-gov-west-1.amazonaws.com,
# sns.cn-north-1.amazonaws.com.cn. The label must look like a region: any word would also
# admit sns.s3.amazonaws.com, S3's bucket namespace (anyone can host a certificate there).
SNS_HOST = re.compile(r"sns\.(?:(?!cn-)(?:[a-z]{2}|us-gov)-[a-z]+-[0-9]{1,2}\.amazonaws\.com"
                      r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)")
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


def check_certificate_url(url: object) -> str:
    """Return ``url`` if it can only be an SNS signing certificate: https, on
    ``sns.<region>.amazonaws.com`` (``sns.cn-<...>.amazonaws.com.cn`` in China), a ``.pem``
    path, no port but 443, no credentials, query or fragment.

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
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


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

        Everything that needs no certificate is checked before one is fetched: the topic
        first (anyone can subscribe an endpoint to their own topic, and SNS signs those
        messages too), then the fields and the age.

        :raises TopicNotAllowedError: ``TopicArn`` is not one of ours.
        :raises SignatureError: unsupported ``SignatureVersion``, bad certificate URL,
            signature mismatch, or a message older than SNS would still retry.
        :raises MalformedMessageError: a field the signature covers is missing.
        :raises CertificateUnavailableError: the certificate cannot be fetched now.
        """
        topic = message.get("TopicArn")
        if not isinstance(topic, str) or topic not in self.topics:
            raise TopicNotAllowedError("The SNS topic is not in SES_TOPIC_ARNS")
        algorithm = SNS_HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise SignatureError("Unsupported SNS SignatureVersion (expected 1 or 2)")
        signed = sns_string_to_sign(message)
        signature = message.get("Signature")
        if not isinstance(signature, str):
            raise SignatureError("The SNS message is not signed")
        # A stale message is refused whoever signed it: no need to fetch a certificate.
        check_age(_iso_seconds(message.get("Timestamp")), now, max_age=self.max_age,
                  max_ahead=self.max_ahead)
        key = self.certificates.public_key(message.get("SigningCertURL"), now=now)
        try:
            key.verify(b64decode(signature), signed, padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise SignatureError("The SNS signature does not match") from None
