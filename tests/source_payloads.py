"""Email providers' webhook payloads, shaped like each provider's documented example (with our
ids in the message metadata), and the signers that make them: keys are made here, per run.

Sources of the shapes:
- SendGrid: the ``open`` event of https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event;
  custom arguments arrive as top-level keys (…/sending-email/unique-arguments).
- Mailgun: the ``opened`` payload of
  https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads and the
  ``client-info.bot`` field of …/tracking-messages/open-click-bot-detect.
- Postmark: https://postmarkapp.com/developer/webhooks/open-tracking-webhook.
- Amazon SES: the Open record of
  https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-examples.html,
  wrapped in an SNS message (https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from service.ingest.signatures import sns_string_to_sign

from .conftest import T0

UTC = dt.UTC
LOC = "ve9EPM428h8vShlRW1KT"
INV = "6578278e879ad2646715ba9c"
EST = "6578278e879ad2646715ba9d"
IDS = {"locationId": LOC, "invoiceId": INV}
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-opens"
CERT_URL = ("https://sns.us-east-1.amazonaws.com/"
            "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")


def unix(when: dt.datetime) -> int:
    return int(when.timestamp())


@dataclass(frozen=True)
class Keys:
    """Every source's test credentials; the RSA key and its certificate play SNS's."""

    sendgrid: ec.EllipticCurvePrivateKey
    mailgun: str
    postmark: str
    sns: rsa.RSAPrivateKey
    sns_cert_pem: bytes
    internal: tuple[str, str]  # (current, previous) Standard Webhooks secrets

    @property
    def sendgrid_public(self) -> str:
        der = self.sendgrid.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()  # as SendGrid's settings page shows it

    def config(self) -> dict:
        return {"SENDGRID_WEBHOOK_PUBLIC_KEY": self.sendgrid_public,
                "MAILGUN_SIGNING_KEY": self.mailgun,
                "POSTMARK_WEBHOOK_CREDENTIALS": self.postmark,
                "SES_TOPIC_ARNS": [TOPIC],
                "INTERNAL_WEBHOOK_SECRETS": list(self.internal)}


def self_signed(key: rsa.RSAPrivateKey, *, not_before: dt.datetime,
                not_after: dt.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@functools.cache
def make_keys() -> Keys:
    """Fresh keys, made once per test session (an RSA key takes a few hundred ms)."""
    sns = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(
        sendgrid=ec.generate_private_key(ec.SECP256R1()),
        mailgun="key-" + secrets.token_hex(16),
        postmark="relay-hook:" + secrets.token_urlsafe(18),
        sns=sns,
        sns_cert_pem=self_signed(sns, not_before=T0 - dt.timedelta(days=365),
                                 not_after=T0 + dt.timedelta(days=3 * 365)),
        internal=("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                  "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()),
    )


# -- SendGrid ------------------------------------------------------------------------------

def sendgrid_open(**overrides) -> dict:
    """SendGrid's documented ``open`` event, with our ids as custom arguments."""
    event = {
        "email": "example@test.com",
        "timestamp": unix(T0) - 60,
        "event": "open",
        "sg_machine_open": False,
        "category": "cat facts",
        "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; "
                     ".NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
        **IDS,
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def sendgrid_delivered() -> dict:
    return {"email": "example@test.com", "timestamp": unix(T0) - 120,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "event": "delivered",
            "category": "cat facts", "sg_event_id": "ZGVsaXZlcmVkLTAtMzQ0ODY2NS05ZVpC",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "response": "250 OK", **IDS}


def sendgrid_request(events, *, key: ec.EllipticCurvePrivateKey, at: dt.datetime,
                     body: bytes | None = None) -> tuple[bytes, dict]:
    """The body and headers of a signed Event Webhook POST."""
    body = json.dumps(events).encode() if body is None else body
    timestamp = str(unix(at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                  "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
                  "Content-Type": "application/json"}


# -- Mailgun -------------------------------------------------------------------------------

def mailgun_opened(**overrides) -> dict:
    """Mailgun's documented ``opened`` event-data, with our ids as user variables."""
    data = {
        "id": "Ase7i2zsRYeDXztHGENqRA",
        "timestamp": unix(T0) - 30.126,
        "log-level": "info",
        "event": "opened",
        "message": {"headers": {"message-id": "20130503182626.18666.16540@example.com"}},
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "ip": "50.56.129.169",
        "geolocation": {"country": "US", "region": "CA", "city": "San Francisco"},
        "client-info": {
            "client-os": "Linux", "device-type": "desktop", "client-name": "Chrome",
            "client-type": "browser",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.31 (KHTML, like "
                          "Gecko) Chrome/26.0.1410.43 Safari/537.31",
        },
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": dict(IDS),
    }
    data.update(overrides)
    return data


def mailgun_signature(*, key: str, at: dt.datetime, token: str | None = None,
                      parent_key: str | None = None) -> dict:
    token = token or secrets.token_hex(25)  # "randomly generated string with length 50"
    timestamp = str(unix(at))
    signature = {"token": token, "timestamp": timestamp,
                 "signature": hmac.new(key.encode(), (timestamp + token).encode(),
                                       hashlib.sha256).hexdigest()}
    if parent_key:
        signature["signature"] = hmac.new(b"subaccount-key", (timestamp + token).encode(),
                                          hashlib.sha256).hexdigest()
        signature["parent-signature"] = hmac.new(parent_key.encode(),
                                                 (timestamp + token).encode(),
                                                 hashlib.sha256).hexdigest()
    return signature


def mailgun_webhook(event_data: dict, *, key: str, at: dt.datetime, **signature) -> dict:
    return {"signature": mailgun_signature(key=key, at=at, **signature),
            "event-data": event_data}


# -- Postmark ------------------------------------------------------------------------------

def postmark_open(**overrides) -> dict:
    """Postmark's documented Open webhook, with our ids in Metadata."""
    document = {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "Metadata": dict(IDS),
        "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.",
               "Family": "OS X 10"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 "
                     "(KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36",
        "ReadSeconds": 5,
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "RegionISOCode": "VO",
                "Region": "Autonomna Pokrajina Vojvodina", "City": "Novi Sad", "Zip": "21000",
                "Coords": "45.2517,19.8369", "IP": "188.2.95.4"},
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ReceivedAt": "2026-01-05T11:59:34.9070259Z",
        "Tag": "welcome-email",
        "Recipient": "john@example.com",
    }
    document.update(overrides)
    return document


def basic_auth(credentials: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


# -- Amazon SES through SNS ----------------------------------------------------------------

def ses_open(tags: dict | None = None, **overrides) -> dict:
    """SES's documented Open event record, with our ids as message tags (lists)."""
    record = {
        "eventType": "Open",
        "mail": {
            "commonHeaders": {"from": ["sender@example.com"],
                              "messageId": "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-"
                                           "dd0099a07f8a-000000",
                              "subject": "Message sent from Amazon SES",
                              "to": ["recipient@example.com"]},
            "destination": ["recipient@example.com"],
            "headers": [{"name": "X-SES-MESSAGE-TAGS",
                         "value": f"locationId={LOC}, invoiceId={INV}"},
                        {"name": "From", "value": "sender@example.com"},
                        {"name": "To", "value": "recipient@example.com"},
                        {"name": "Subject", "value": "Message sent from Amazon SES"},
                        {"name": "MIME-Version", "value": "1.0"},
                        {"name": "Content-Type", "value": "text/html; charset=UTF-8"}],
            "headersTruncated": False,
            "messageId": "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000",
            "sendingAccountId": "123456789012",
            "source": "sender@example.com",
            "tags": {"ses:caller-identity": ["IAM_user_or_role_name"],
                     "ses:configuration-set": ["ConfigSet"],
                     "ses:from-domain": ["example.com"],
                     "ses:source-ip": ["192.0.2.0"],
                     **({"locationId": [LOC], "invoiceId": [INV]} if tags is None else tags)},
            "timestamp": "2026-01-05T11:58:49.927Z",
        },
        "open": {"ipAddress": "192.0.2.1", "timestamp": "2026-01-05T11:59:19.652Z",
                 "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) "
                              "AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60"},
    }
    record.update(overrides)
    return record


def sns_sign(message: dict, *, key: rsa.RSAPrivateKey, version: str = "1") -> dict:
    """Sign an SNS message the way SNS does (SHA1 for version 1, SHA256 for 2)."""
    message = {**message, "SignatureVersion": version}
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def sns_notification(record: dict, *, key: rsa.RSAPrivateKey, at: dt.datetime,
                     message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                     version: str = "1", topic: str = TOPIC, cert_url: str = CERT_URL) -> dict:
    message = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": json.dumps(record),
        "Timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&"
                          f"SubscriptionArn={topic}:c9135db0-26c4-47ec-8998-413945fb5a96",
    }
    return sns_sign(message, key=key, version=version)


def sns_subscription_confirmation(*, key: rsa.RSAPrivateKey, at: dt.datetime) -> dict:
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3" \
            "beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6f"
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": token,
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the "
                   "subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&"
                        f"TopicArn={TOPIC}&Token={token}",
        "Timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SigningCertURL": CERT_URL,
    }
    return sns_sign(message, key=key)


def sns_headers(message: dict) -> dict:
    # SNS posts JSON as text/plain unless the subscription's delivery policy says otherwise.
    return {"Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": message["Type"],
            "x-amz-sns-message-id": message["MessageId"],
            "x-amz-sns-topic-arn": message["TopicArn"],
            "User-Agent": "Amazon Simple Notification Service Agent"}


# -- Standard Webhooks (internal) ----------------------------------------------------------

def internal_request(payload, *, secret: str, at: dt.datetime,
                     msg_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
                     body: bytes | None = None) -> tuple[bytes, dict]:
    """A Standard Webhooks request, signed by the ``standardwebhooks`` package."""
    body = json.dumps(payload).encode() if body is None else body
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(unix(at)),
                  "webhook-signature": signature, "Content-Type": "application/json"}
