"""Prove that a webhook comes from the source it claims: one module per email provider's scheme.

Each ``verify`` raises ``SignatureError`` (answered 401) when the request is not signed by
the source, or is signed but stale or already used. Times come in as ``now`` (the app's
clock), so tests drive them. Comparisons of secrets are constant-time; public-key checks
use ``cryptography``. No Flask here.

- ``sendgrid``: ECDSA P-256 / SHA-256 over ``timestamp + raw body``.
- ``mailgun``: HMAC-SHA256 over ``timestamp + token``; each token accepted once (``UsedTokens``).
- ``postmark``: no signature; HTTP Basic credentials in the webhook URL.
- ``sns``: Amazon SNS (carrying SES events), RSA over the message's canonical string with the
  certificate at ``SigningCertURL``.
- ``standard_webhooks``: internal services (https://www.standardwebhooks.com/).
- ``common``: the errors every scheme raises and the time checks they share.

The names below are the package's interface: import them from ``service.signatures``.
"""

from .common import (
    CertificateUnavailableError,
    MalformedMessageError,
    SignatureError,
    TopicNotAllowedError,
)
from .mailgun import MailgunVerifier, UsedTokens
from .postmark import BasicCredentials
from .sendgrid import SendGridVerifier
from .sns import (
    CertificateFetcher,
    SnsVerifier,
    check_certificate_url,
    http_download,
    sns_string_to_sign,
)
from .standard_webhooks import StandardWebhookVerifier

__all__ = [
    "BasicCredentials",
    "CertificateFetcher",
    "CertificateUnavailableError",
    "MailgunVerifier",
    "MalformedMessageError",
    "SendGridVerifier",
    "SignatureError",
    "SnsVerifier",
    "StandardWebhookVerifier",
    "TopicNotAllowedError",
    "UsedTokens",
    "check_certificate_url",
    "http_download",
    "sns_string_to_sign",
]
