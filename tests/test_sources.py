"""Email providers' webhooks as sources: signed payloads in, views stored, HighLevel told.

Payloads are shaped like each provider's documented examples (tests/source_payloads.py),
signed with keys made in the test; tampered, stale and replayed variants are refused or
deduplicated as the issue specifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import shutil

import pytest
import sqlalchemy as sa

from service import create_app
from service.config import ConfigError
from service.forward.forwarder import Forwarder
from service.highlevel.client import HighLevelClient, build_pool
from service.ingest.signatures import CertificateFetcher, SignatureError, check_certificate_url
from service.ingest.sources import Context, event_key, parse_mailgun, route
from service.ingest.verdicts import Classifier
from service.store.db import events, used_webhook_tokens

from .conftest import BACKENDS, T0, ingest_headers, make_event, test_config
from .fakes import InlineExecutor
from .source_payloads import (
    CERT_URL,
    CHROME,
    EST,
    IDS,
    INV,
    LOC,
    TOPIC,
    basic_auth,
    internal_request,
    mailgun_opened,
    mailgun_webhook,
    make_keys,
    postmark_open,
    self_signed,
    sendgrid_delivered,
    sendgrid_open,
    sendgrid_request,
    ses_open,
    sns_headers,
    sns_notification,
    sns_sign,
    sns_subscription_confirmation,
)

TOKEN = "pit-sources-e2e-token-1"


class FakeDownload:
    """Stands in for fetching SNS certificates: serves ours, records every URL asked for."""

    def __init__(self, pem: bytes):
        self.pem = pem
        self.urls: list[str] = []
        self.fail = False

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if self.fail:
            raise ConnectionError("no route to host")
        return self.pem


@pytest.fixture(params=["sqlite"])
def backend(request):
    """SQLite only, here: the tests that depend on the store's SQL name BACKENDS themselves
    (a PostgreSQL app costs most of a second to set up)."""
    return request.param


@pytest.fixture
def keys():
    return make_keys()


@pytest.fixture
def downloads(keys):
    return FakeDownload(keys.sns_cert_pem)


@pytest.fixture
def app(migrated_db_url, clock, keys, downloads):
    """Every source configured; SNS certificates come from ``downloads``, never the network."""
    app = create_app(test_config(migrated_db_url, **keys.config()))
    app.extensions["service"].clock = clock
    app.extensions["service"].sources.ses.certificates = CertificateFetcher(downloads)
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory, sqlite_template):
    path = tmp_path_factory.mktemp("sources") / "relay.db"
    shutil.copy(sqlite_template, path)
    app = create_app(test_config(f"sqlite:///{path}", **make_keys().config()))
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory, sqlite_template):
    """No source configured."""
    path = tmp_path_factory.mktemp("bare") / "relay.db"
    shutil.copy(sqlite_template, path)
    app = create_app(test_config(f"sqlite:///{path}"))
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture(scope="module")
def context():
    """What a parser needs, without an app: the shipped classifier at T0."""
    return Context(classifier=Classifier.load(), machine_opens="skip", now=T0)


@pytest.fixture
def refused(shared_app, clock, downloads):
    """A client of one app that every refusal test shares: a refused request changes nothing,
    which is checked after each test (no view, no used token)."""
    shared_app.extensions["service"].clock = clock
    shared_app.extensions["service"].sources.ses.certificates = CertificateFetcher(downloads)
    yield shared_app.test_client()
    with shared_app.extensions["service"].engine.connect() as conn:
        for table in (events, used_webhook_tokens):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def stored(services) -> list:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(events).order_by(events.c.received_at)).all()


# -- SendGrid ------------------------------------------------------------------------------

def post_sendgrid(client, keys, batch, *, at=T0, body=None, headers=None):
    body, signed = sendgrid_request(batch, key=keys.sendgrid, at=at, body=body)
    return client.post("/v1/sources/sendgrid", data=body, headers={**signed, **(headers or {})})


def test_sendgrid_open_events_become_views(client, services, keys):
    batch = [sendgrid_delivered(), sendgrid_open(),
             sendgrid_open(sg_event_id="b9dJ0Uh9RmqNnN3vpmFydA", sg_machine_open=True,
                           useragent="Mozilla/5.0", ip="17.58.1.2", invoiceId="inv_mpp"),
             sendgrid_open(sg_event_id="c2pmZWVkYmFjay0xMjM0", locationId=None,
                           invoiceId=None)]  # a newsletter: no ids of ours

    resp = post_sendgrid(client, keys, batch)

    assert resp.status_code == 200, resp.json
    assert resp.json == {"views": 2, "queued": 1, "filtered": 1, "duplicate": 0,
                         "unroutable": 1, "ignored": 1}
    human, machine = stored(services)
    assert (human.source, human.event_key, human.kind, human.location_id, human.document_id) \
        == ("sendgrid", "sg:rbtnWrG1DVDGGGFHFyun0A", "invoice", LOC, INV)
    assert human.viewed_at == T0 - dt.timedelta(seconds=60)
    assert (human.ip, human.verdict, human.forward) == ("255.255.255.0", "human", True)
    assert (machine.verdict, machine.verdict_reason, machine.forward) == (
        "machine_prefetch", "sendgrid:sg_machine_open", False)
    assert services.store.queue_depth() == {"pending": 1}


def test_sendgrid_replay_is_a_duplicate(client, services, keys, clock):
    post_sendgrid(client, keys, [sendgrid_open()])
    clock.advance(30)  # SendGrid retries: the same event, signed again
    again = post_sendgrid(client, keys, [sendgrid_open()], at=clock())
    assert again.status_code == 200
    assert (again.json["views"], again.json["duplicate"]) == (1, 1)
    assert len(stored(services)) == 1


def test_sendgrid_estimate(client, services, keys):
    post_sendgrid(client, keys, [sendgrid_open(invoiceId=None, estimateId=EST)])
    [row] = stored(services)
    assert (row.kind, row.document_id) == ("estimate", EST)


@pytest.mark.parametrize("tamper", ["body", "key", "timestamp", "missing", "not_base64",
                                    "stale", "future"])
def test_sendgrid_bad_signatures_are_401(refused, keys, clock, tamper):
    from cryptography.hazmat.primitives.asymmetric import ec

    body, headers = sendgrid_request([sendgrid_open()], key=keys.sendgrid, at=T0)
    if tamper == "body":
        body = body.replace(INV.encode(), b"6578278e879ad2646715ffff")
    elif tamper == "key":
        body, headers = sendgrid_request([sendgrid_open()], key=ec.generate_private_key(
            ec.SECP256R1()), at=T0)
    elif tamper == "timestamp":
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = str(int(T0.timestamp()) + 1)
    elif tamper == "missing":
        del headers["X-Twilio-Email-Event-Webhook-Signature"]
    elif tamper == "not_base64":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!"
    elif tamper == "stale":
        clock.advance(601)
    elif tamper == "future":
        clock.advance(-601)

    resp = refused.post("/v1/sources/sendgrid", data=body, headers=headers)

    assert resp.status_code == 401, resp.json
    assert resp.json["statusCode"] == 401


@pytest.mark.parametrize("body", [b"{not json", b'{"event": "open"}', b'["open"]', b"\xff"])
def test_sendgrid_unreadable_payload_is_400(refused, keys, body):
    resp = post_sendgrid(refused, keys, None, body=body)
    assert resp.status_code == 400


# -- Mailgun -------------------------------------------------------------------------------

def post_mailgun(client, document):
    return client.post("/v1/sources/mailgun", json=document)


def test_mailgun_opened_becomes_a_view(client, services, keys):
    resp = post_mailgun(client, mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0))
    assert resp.status_code == 200, resp.json
    assert (resp.json["views"], resp.json["queued"]) == (1, 1)
    [row] = stored(services)
    assert (row.source, row.event_key, row.location_id, row.document_id, row.ip) == (
        "mailgun", "mg:Ase7i2zsRYeDXztHGENqRA", LOC, INV, "50.56.129.0")
    assert row.user_agent.startswith("Mozilla/5.0 (X11; Linux x86_64)")
    assert row.viewed_at == T0 - dt.timedelta(seconds=30.126)


@pytest.mark.parametrize(("bot", "verdict", "forward"), [
    ("apple", "machine_prefetch", False),
    ("gmail", "proxy_open", True),  # Gmail's image proxy fetches when the message is opened
    ("generic", "bot", False),
    ("", "human", True),  # empty: no bot detected, the user agent decides
])
def test_mailgun_bot_field_decides_the_verdict(context, bot, verdict, forward):
    data = mailgun_opened()
    data["client-info"]["bot"] = bot
    [view] = parse_mailgun({"event-data": data}, context).views
    assert (view.verdict, view.forward) == (verdict, forward)


def test_mailgun_subaccount_parent_signature_is_accepted(client, keys):
    document = mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0,
                               parent_key=keys.mailgun)
    assert post_mailgun(client, document).status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_mailgun_reused_token_is_refused(client, services, keys):
    first = mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0)
    assert post_mailgun(client, first).status_code == 200
    # The signature covers only timestamp + token: a captured one on a forged event.
    forged = {**first, "event-data": mailgun_opened(id="forged-id", **{
        "user-variables": {"locationId": LOC, "invoiceId": "inv_forged"}})}
    resp = post_mailgun(client, forged)
    assert resp.status_code == 401
    assert "already used" in resp.json["message"]
    assert [row.document_id for row in stored(services)] == [INV]
    assert post_mailgun(client, first).status_code == 401  # the same request replayed


def test_mailgun_retry_with_a_fresh_token_is_a_duplicate(client, services, keys, clock):
    post_mailgun(client, mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0))
    clock.advance(300)
    resp = post_mailgun(client, mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=clock()))
    assert (resp.status_code, resp.json["duplicate"]) == (200, 1)
    assert len(stored(services)) == 1


@pytest.mark.parametrize("tamper", ["signature", "key", "stale", "missing", "token"])
def test_mailgun_bad_signatures_are_401(refused, keys, clock, tamper):
    document = mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0)
    signature = document["signature"]
    if tamper == "signature":
        signature["signature"] = signature["signature"][:-1] + (
            "0" if signature["signature"][-1] != "0" else "1")
    elif tamper == "key":
        document = mailgun_webhook(mailgun_opened(), key="key-someone-else", at=T0)
    elif tamper == "stale":
        clock.advance(601)
    elif tamper == "missing":
        del document["signature"]
    elif tamper == "token":
        signature["token"] = signature["token"][::-1]
    resp = post_mailgun(refused, document)
    assert resp.status_code == 401, resp.json


@pytest.mark.parametrize("backend", BACKENDS)
def test_mailgun_token_is_released_when_the_store_fails(app, client, services, keys,
                                                        monkeypatch):
    document = mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0)

    # Not an app on UNREACHABLE_DB_URL: the store must fail between the token's claim
    # and the views' write, then be back for the retry, on the same database.
    def down(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))

    with monkeypatch.context() as patch:
        patch.setattr(services.store, "record_views", down)
        assert post_mailgun(client, document).status_code == 503
    assert post_mailgun(client, document).status_code == 200  # Mailgun's retry is accepted


def test_mailgun_other_events_are_ignored_and_unroutable_ones_counted(client, services, keys,
                                                                      caplog):
    delivered = mailgun_webhook(mailgun_opened(event="delivered"), key=keys.mailgun, at=T0)
    assert post_mailgun(client, delivered).json["ignored"] == 1
    caplog.set_level(logging.INFO, logger="service.web.sources")
    no_ids = mailgun_webhook(mailgun_opened(**{"user-variables": {"my_var_1": "x"}}),
                             key=keys.mailgun, at=T0)
    resp = post_mailgun(client, no_ids)
    assert (resp.status_code, resp.json["unroutable"]) == (200, 1)
    [line] = [r for r in caplog.records if r.getMessage() == "source.unroutable"]
    assert (line.provider, line.reason, line.unroutable_total) == ("mailgun", "missing_ids", 1)
    assert stored(services) == []


@pytest.mark.parametrize("body", [b"timestamp=1&token=x&signature=y", b"[]", b"null"])
def test_mailgun_unreadable_payload_is_400(refused, body):
    resp = refused.post("/v1/sources/mailgun", data=body, content_type="application/json")
    assert resp.status_code == 400


def test_mailgun_signed_webhook_without_event_data_is_400(refused, keys):
    document = mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0)
    del document["event-data"]
    assert post_mailgun(refused, document).status_code == 400


# -- Postmark ------------------------------------------------------------------------------

def post_postmark(client, keys, document, *, credentials=None):
    return client.post("/v1/sources/postmark", json=document,
                       headers=basic_auth(credentials or keys.postmark))


def test_postmark_open_becomes_a_view(client, services, keys):
    resp = post_postmark(client, keys, postmark_open())
    assert resp.status_code == 200, resp.json
    assert resp.json["queued"] == 1
    [row] = stored(services)
    assert (row.source, row.location_id, row.document_id, row.ip) == (
        "postmark", LOC, INV, "188.2.95.0")
    assert row.event_key.startswith("pm~")  # MessageID + ReceivedAt, hashed to fit 64
    assert row.viewed_at == dt.datetime(2026, 1, 5, 11, 59, 34, 907025, tzinfo=dt.UTC)


def test_postmark_dedups_on_message_id_and_received_at(client, services, keys):
    post_postmark(client, keys, postmark_open())
    assert post_postmark(client, keys, postmark_open()).json["duplicate"] == 1
    later = postmark_open(FirstOpen=False, ReceivedAt="2026-01-05T11:59:50.1Z")
    assert post_postmark(client, keys, later).json["queued"] == 1  # a second open
    assert len(stored(services)) == 2


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer x"},
    {"Authorization": "Basic not-base64!"},
    basic_auth("relay-hook:wrong-password"),
    basic_auth("someone:else"),
])
def test_postmark_needs_the_configured_credentials(refused, headers):
    resp = refused.post("/v1/sources/postmark", json=postmark_open(), headers=headers)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


def test_postmark_other_records_are_ignored(refused, keys):
    delivery = {"RecordType": "Delivery", "MessageID": "883953f4", "Metadata": dict(IDS)}
    assert post_postmark(refused, keys, delivery).json["ignored"] == 1


def test_postmark_ids_that_are_not_ours_are_unroutable(refused, keys):
    both = postmark_open(Metadata={**IDS, "estimateId": EST})
    bad = postmark_open(Metadata={"locationId": "has space", "invoiceId": INV},
                        ReceivedAt="2026-01-05T11:59:40Z")
    assert post_postmark(refused, keys, both).json["unroutable"] == 1
    assert post_postmark(refused, keys, bad).json["unroutable"] == 1


# -- Amazon SES through SNS ----------------------------------------------------------------

def post_sns(client, message):
    return client.post("/v1/sources/ses", data=json.dumps(message), headers=sns_headers(message))


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_open_through_sns_becomes_a_view(client, services, keys, downloads, version):
    message = sns_notification(ses_open(), key=keys.sns, at=T0, version=version)
    resp = post_sns(client, message)
    assert resp.status_code == 200, resp.json
    assert resp.json["queued"] == 1
    [row] = stored(services)
    assert (row.source, row.event_key, row.location_id, row.document_id, row.ip) == (
        "ses", "ses:22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", LOC, INV, "192.0.2.0")
    assert downloads.urls == [CERT_URL]


def test_ses_certificate_is_fetched_once(client, keys, downloads):
    for n in range(3):
        post_sns(client, sns_notification(ses_open(), key=keys.sns, at=T0, message_id=f"m-{n}"))
    assert downloads.urls == [CERT_URL]


def test_ses_replay_is_a_duplicate(client, services, keys):
    message = sns_notification(ses_open(), key=keys.sns, at=T0)
    post_sns(client, message)
    assert post_sns(client, message).json["duplicate"] == 1
    assert len(stored(services)) == 1


def test_ses_subscription_confirmation_is_logged_for_an_operator(refused, keys, caplog):
    caplog.set_level(logging.INFO, logger="service.web.sources")
    message = sns_subscription_confirmation(key=keys.sns, at=T0)
    resp = post_sns(refused, message)
    assert resp.status_code == 200
    assert "SubscribeURL" in resp.json["message"]
    [line] = [r for r in caplog.records if r.getMessage() == "source.ses.subscription"]
    assert line.subscribe_url == message["SubscribeURL"]
    assert line.topic_arn == TOPIC


@pytest.mark.parametrize("tamper", ["message", "signature", "version", "stale", "cert_expired"])
def test_ses_bad_signatures_are_401(refused, keys, clock, downloads, tamper):
    message = sns_notification(ses_open(), key=keys.sns, at=T0)
    if tamper == "message":
        message["Message"] = message["Message"].replace(INV, "6578278e879ad2646715ffff")
    elif tamper == "signature":
        message["Signature"] = base64.b64encode(b"\0" * 256).decode()
    elif tamper == "version":
        message = sns_sign(message, key=keys.sns, version="3")
    elif tamper == "stale":
        clock.advance(3600 + 301)  # SNS stops retrying after an hour
    elif tamper == "cert_expired":
        downloads.pem = self_signed(keys.sns, not_before=T0 - dt.timedelta(days=30),
                                    not_after=T0 - dt.timedelta(days=1))
    resp = post_sns(refused, message)
    assert resp.status_code == 401, resp.json


def test_ses_topic_must_be_allowed_before_anything_is_fetched(refused, keys, downloads):
    other = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic"
    resp = post_sns(refused, sns_notification(ses_open(), key=keys.sns, at=T0, topic=other))
    assert resp.status_code == 403
    assert downloads.urls == []


@pytest.mark.parametrize("topic", [
    TOPIC.upper(), TOPIC + " ", TOPIC.replace("us-east-1", "us-west-2"), [TOPIC], {TOPIC: 1},
    7, None,
])
def test_ses_topic_not_exactly_ours_is_403_before_anything_is_fetched(refused, keys, downloads,
                                                                      topic):
    """A TopicArn that is not a string was a 500 (unhashable, looked up in a set)."""
    message = {**sns_notification(ses_open(), key=keys.sns, at=T0), "TopicArn": topic}
    resp = refused.post("/v1/sources/ses", data=json.dumps(message),
                        headers={"Content-Type": "text/plain; charset=UTF-8"})
    assert resp.status_code == 403, resp.json
    assert resp.json["message"] == "The SNS topic is not in SES_TOPIC_ARNS"
    assert downloads.urls == []


def test_ses_subscription_to_another_topic_is_403_before_anything_is_fetched(refused, keys,
                                                                             downloads):
    message = sns_sign({**sns_subscription_confirmation(key=keys.sns, at=T0),
                        "TopicArn": "arn:aws:sns:us-east-1:999999999999:not-ours"}, key=keys.sns)
    assert post_sns(refused, message).status_code == 403
    assert downloads.urls == []


def test_ses_stale_message_is_401_before_anything_is_fetched(refused, keys, clock, downloads):
    message = sns_notification(ses_open(), key=keys.sns, at=T0)
    clock.advance(3600 + 301)
    assert post_sns(refused, message).status_code == 401
    assert downloads.urls == []


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
    "https://s3.amazonaws.com/attacker-bucket/cert.pem",
    # S3's bucket namespace: a bucket named "sns" serves whatever its owner puts there.
    "https://sns.s3.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.s3-us-west-2.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.s3-accelerate.amazonaws.com/SimpleNotificationService-x.pem",
    # Other look-alikes: no region, not a region, the wrong partition, a trailing dot.
    "https://sns.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.evil.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1-evil.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
    "https://sns.cn-north-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-x.pem",
    "https://sns.us-east-1.evil.amazonaws.com/SimpleNotificationService-x.pem",
    "https://xsns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.txt",
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-x.pem",
    "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com/x.pem?redirect=https://evil.example",
    None,
])
def test_ses_certificate_url_outside_aws_is_never_fetched(refused, keys, downloads, url):
    resp = post_sns(refused, sns_notification(ses_open(), key=keys.sns, at=T0, cert_url=url))
    assert resp.status_code == 401
    assert downloads.urls == []


@pytest.mark.parametrize("url", [
    CERT_URL,
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3242f.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-1.pem",
    "https://sns.ap-southeast-7.amazonaws.com/SimpleNotificationService-1.pem",
    "https://SNS.EU-CENTRAL-2.AMAZONAWS.COM/SimpleNotificationService-1.pem",
])
def test_certificate_urls_of_sns_are_allowed(url):
    assert check_certificate_url(url) == url


def test_ses_certificate_unavailable_is_503_so_sns_retries(client, services, keys, downloads):
    downloads.fail = True
    resp = post_sns(client, sns_notification(ses_open(), key=keys.sns, at=T0))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    downloads.fail = False
    assert post_sns(client, sns_notification(ses_open(), key=keys.sns, at=T0)).json[
        "queued"] == 1


def test_ses_other_events_ignored_and_missing_tags_unroutable(refused, keys):
    delivery = ses_open(eventType="Delivery")
    assert post_sns(refused, sns_notification(delivery, key=keys.sns, at=T0, message_id="a")
                    ).json["ignored"] == 1
    untagged = ses_open(tags={})
    assert post_sns(refused, sns_notification(untagged, key=keys.sns, at=T0, message_id="b")
                    ).json["unroutable"] == 1


@pytest.mark.parametrize("body", [b"not json", b"[]"])
def test_ses_unreadable_payload_is_400(refused, body):
    assert refused.post("/v1/sources/ses", data=body).status_code == 400


def test_ses_signed_message_that_is_not_an_ses_event_is_400(refused, keys):
    message = sns_notification(ses_open(), key=keys.sns, at=T0)
    message = sns_sign({**message, "Message": "hello"}, key=keys.sns)
    assert post_sns(refused, message).status_code == 400


# -- Internal services (Standard Webhooks) -------------------------------------------------

def post_internal(client, payload, *, secret, at=T0, **kwargs):
    body, headers = internal_request(payload, secret=secret, at=at, **kwargs)
    return client.post("/v1/sources/internal", data=body, headers=headers)


def test_internal_signed_event_is_accepted(client, services, keys):
    resp = post_internal(client, make_event(userAgent=CHROME), secret=keys.internal[0])
    assert resp.status_code == 202, resp.json
    assert resp.json["status"] == "queued"
    [row] = stored(services)
    assert (row.source, row.event_key, row.user_agent) == (
        "internal", "internal:msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", CHROME)


def test_internal_webhook_id_is_the_idempotency_key(client, services, keys, clock):
    first = post_internal(client, make_event(), secret=keys.internal[0])
    clock.advance(60)  # a retry: same webhook-id, signed again
    again = post_internal(client, make_event(), secret=keys.internal[0], at=clock())
    assert again.json == {"id": first.json["id"], "status": "duplicate"}
    other = post_internal(client, make_event(), secret=keys.internal[0], msg_id="msg_other")
    assert other.json["status"] == "queued"


def test_internal_batch_and_event_id(client, services, keys):
    batch = {"events": [make_event(invoiceId="inv_a"), make_event(invoiceId="inv_b",
                                                                  eventId="crm-7")]}
    resp = post_internal(client, batch, secret=keys.internal[0], msg_id="msg_batch")
    assert [e["status"] for e in resp.json["events"]] == ["queued", "queued"]
    assert sorted(row.event_key for row in stored(services)) == ["crm-7",
                                                                 "internal:msg_batch:0"]


def test_internal_previous_secret_still_verifies_while_it_rotates(client, keys):
    assert post_internal(client, make_event(), secret=keys.internal[1]).status_code == 202


@pytest.mark.parametrize("tamper", ["secret", "body", "stale", "future", "missing", "garbage",
                                    "v2_only", "timestamp"])
def test_internal_bad_signatures_are_401(refused, keys, clock, tamper):
    body, headers = internal_request(make_event(), secret=keys.internal[0], at=T0)
    if tamper == "secret":
        body, headers = internal_request(
            make_event(), secret="whsec_" + base64.b64encode(b"x" * 24).decode(), at=T0)
    elif tamper == "body":
        body = body.replace(b"inv_1", b"inv_2")
    elif tamper == "stale":
        clock.advance(301)
    elif tamper == "future":
        clock.advance(-301)
    elif tamper == "missing":
        del headers["webhook-id"]
    elif tamper == "garbage":
        headers["webhook-signature"] = "garbage v1 v1,%%%"
    elif tamper == "v2_only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = "soon"
    resp = refused.post("/v1/sources/internal", data=body, headers=headers)
    assert resp.status_code == 401, resp.json


def test_internal_invalid_event_is_422_after_the_signature(refused, keys):
    resp = post_internal(refused, make_event(locationId=None), secret=keys.internal[0])
    assert resp.status_code == 422
    assert "locationId" in resp.json["errors"]


def test_internal_route_does_not_take_a_bearer_key(refused):
    resp = refused.post("/v1/sources/internal", json=make_event(), headers=ingest_headers())
    assert resp.status_code == 401


# -- Configuration -------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "setting"), [
    ("sendgrid", "SENDGRID_WEBHOOK_PUBLIC_KEY"), ("mailgun", "MAILGUN_SIGNING_KEY"),
    ("postmark", "POSTMARK_WEBHOOK_CREDENTIALS"), ("ses", "SES_TOPIC_ARNS"),
    ("internal", "INTERNAL_WEBHOOK_SECRETS"),
])
def test_unconfigured_source_is_503_naming_its_setting(bare_app, path, setting):
    resp = bare_app.test_client().post(f"/v1/sources/{path}", data=b"{}")
    assert resp.status_code == 503
    assert setting in resp.json["message"]


@pytest.mark.parametrize(("setting", "value"), [
    ("SENDGRID_WEBHOOK_PUBLIC_KEY", "not-a-key"),
    ("SENDGRID_WEBHOOK_PUBLIC_KEY", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()),
    ("POSTMARK_WEBHOOK_CREDENTIALS", "no-colon"),
    ("SES_TOPIC_ARNS", ["ses-opens"]),
    ("INTERNAL_WEBHOOK_SECRETS", ["whsec_%%%"]),
])
def test_malformed_source_settings_fail_at_startup(tmp_path, setting, value):
    with pytest.raises(ConfigError, match=setting):
        create_app(test_config(f"sqlite:///{tmp_path}/relay.db", **{setting: value}))


def test_sendgrid_key_may_be_pem(migrated_db_url, keys):
    from cryptography.hazmat.primitives import serialization

    pem = keys.sendgrid.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    app = create_app(test_config(migrated_db_url, SENDGRID_WEBHOOK_PUBLIC_KEY=pem))
    assert app.extensions["service"].sources.sendgrid is not None
    app.extensions["service"].engine.dispose()


def test_sources_are_in_the_openapi_document(refused):
    paths = refused.get("/openapi.json").json["paths"]
    assert {f"/v1/sources/{p}" for p in ("sendgrid", "mailgun", "postmark", "ses",
                                         "internal")} <= set(paths)


# -- Pieces --------------------------------------------------------------------------------

@pytest.mark.parametrize(("metadata", "expected"), [
    (IDS, ("invoice", LOC, INV)),
    ({"locationId": [LOC], "estimateId": [EST]}, ("estimate", LOC, EST)),  # SES tag lists
    ({"invoiceId": INV}, "missing_ids"),
    ({"locationId": LOC}, "missing_ids"),
    (None, "missing_ids"),
    ({**IDS, "estimateId": EST}, "ambiguous_document"),
    ({"locationId": LOC, "invoiceId": 12}, "invalid_ids"),
    ({"locationId": "a/b", "invoiceId": INV}, "invalid_ids"),
    ({"locationId": LOC, "invoiceId": "x" * 65}, "invalid_ids"),
])
def test_route_table(metadata, expected):
    assert route(metadata) == expected


def test_event_keys_fit_the_column():
    assert event_key("sg", "abc") == "sg:abc"
    long = event_key("pm", "883953f4-6105-42a2-a16a-77a8eac79483:2026-01-05T11:59:34.9070259Z")
    assert long.startswith("pm~") and len(long) <= 64
    assert long != event_key("pm", "883953f4-6105-42a2-a16a-77a8eac79483:other")


def test_used_tokens_are_pruned_once_older_than_any_replay(app, services, clock):
    tokens = app.extensions["service"].sources.tokens
    assert tokens.claim("mailgun", "t1", now=clock())
    assert not tokens.claim("mailgun", "t1", now=clock())
    clock.advance(2 * 600 + 61)
    assert tokens.claim("mailgun", "t2", now=clock())  # prunes t1
    with services.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(used_webhook_tokens)
                            ).scalar() == 1


def test_certificate_fetcher_rejects_a_non_certificate(keys):
    fetcher = CertificateFetcher(lambda url: b"<html>not a certificate</html>")
    from service.ingest.signatures import CertificateUnavailableError

    with pytest.raises(CertificateUnavailableError):
        fetcher.public_key(CERT_URL, now=T0)
    with pytest.raises(SignatureError):
        fetcher.public_key("https://example.com/x.pem", now=T0)


# -- End to end: provider webhook -> store -> forwarder -> fake HighLevel ------------------

def deliver(kind, client, keys):
    """One open of invoice INV at LOC through each source, signed as the provider does."""
    if kind == "sendgrid":
        return post_sendgrid(client, keys, [sendgrid_open()])
    if kind == "mailgun":
        return post_mailgun(client, mailgun_webhook(mailgun_opened(), key=keys.mailgun, at=T0))
    if kind == "postmark":
        return post_postmark(client, keys, postmark_open())
    if kind == "ses":
        return post_sns(client, sns_notification(ses_open(), key=keys.sns, at=T0))
    return post_internal(client, make_event(locationId=LOC, invoiceId=INV),
                         secret=keys.internal[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["sendgrid", "mailgun", "postmark", "ses", "internal"])
def test_an_open_reaches_highlevel(client, services, keys, clock, fake_highlevel, kind):
    services.vault.set_token(LOC, access_token=TOKEN, now=clock())
    assert deliver(kind, client, keys).status_code in (200, 202)

    with build_pool(2) as session:
        forwarder = Forwarder(services.store, services.vault,
                              HighLevelClient(session, fake_highlevel.url, timeout=(2.0, 5.0)),
                              executor=InlineExecutor(), clock=clock, rand=lambda: 1.0)
        assert forwarder.forward_once(now=clock()) == 1

    [patch] = fake_highlevel.patches()
    assert (patch.path, patch.json, patch.token) == (
        "/invoices/stats/last-visited-at", {"invoiceId": INV}, TOKEN)
    [row] = stored(services)
    assert services.store.event_status(row.id)["status"] == "delivered"
