"""A typed client for internal services, generated from the relay's own ``/openapi.json``.

The relay runs for real (``start_relay``: gunicorn and a forwarder against the fake
HighLevel). Its document is fetched over HTTP and fed to openapi-python-client (offline: no
formatter hooks) in ``tmp_path``; nothing generated is kept in the repository. The
generated package is then used the way an internal service would: typed models in, typed
models out. An attribute that is missing, a status the document does not declare
(``raise_on_unexpected_status``) or a body the generator could not type fails the test, so
this is what says the document is complete; the generator must also report no warning.

SQLite only: the test is about the document, which does not depend on the store.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from .processes import ADMIN_KEY, BIN, HL_TOKEN, INGEST_KEY, LOCATION, patches_for, wait_for

PACKAGE = "relay_client"
# openapi-python-client's config: no post hooks (it would run ruff over the code: slower, and
# nothing to gain in a throwaway package), and the pixel's GIF read as bytes (it types only
# JSON, text and application/octet-stream bodies; the document says image/gif, binary).
GENERATOR_CONFIG = f"""\
project_name_override: relay-client
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  image/gif: application/octet-stream
"""
GENERATE_WITHIN = 120  # seconds; it takes about one


def generate_client(spec: dict, where: Path) -> str:
    """Write ``spec`` and generate the client package ``where/relay_client``; return the
    generator's output. Fails if it exits non-zero (``--fail-on-warning``)."""
    (where / "openapi.json").write_text(json.dumps(spec))
    (where / "config.yaml").write_text(GENERATOR_CONFIG)
    done = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json",
         "--config", "config.yaml", "--meta", "none", "--output-path", PACKAGE,
         "--fail-on-warning"],
        cwd=where, capture_output=True, text=True, timeout=GENERATE_WITHIN, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """Return ``load(spec)``: generate the client and import it (dropped from
    ``sys.modules`` afterwards, so no other test sees it)."""
    where = tmp_path / "client"
    where.mkdir()
    monkeypatch.syspath_prepend(str(where))

    def load(spec: dict) -> SimpleNamespace:
        output = generate_client(spec, where)
        assert "warning" not in output.lower(), output

        def module(name: str):
            return importlib.import_module(f"{PACKAGE}.{name}")

        return SimpleNamespace(output=output, root=importlib.import_module(PACKAGE),
                               models=module("models"), types=module("types"),
                               post_events=module("api.events.post_events"),
                               get_event=module("api.events.get_event"),
                               put_token=module("api.locations.put_token"),
                               post_key=module("api.keys.post_key"))

    yield load
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_generated_client_posts_events_and_reads_their_status(start_relay, fake, generated):
    relay = start_relay()
    with relay.session.get(relay.url + "/openapi.json", timeout=10) as resp:
        assert resp.status_code == 200
        spec = resp.json()
    c = generated(spec)

    clients = ExitStack()  # each client holds a connection pool: closed at the end

    def client(key: str | None):
        """A client raising on any status the document does not declare."""
        if key is None:
            made = c.root.Client(base_url=relay.url, raise_on_unexpected_status=True)
        else:
            made = c.root.AuthenticatedClient(base_url=relay.url, token=key,
                                              raise_on_unexpected_status=True)
        return clients.enter_context(made)

    with clients:
        use_the_client(c, client, fake)


def use_the_client(c: SimpleNamespace, client, fake) -> None:
    """What an internal service does with the generated client, and what an operator's
    client does to let its events through."""
    m = c.models
    ingest = client(INGEST_KEY)

    # One event, as a typed model; the 202 is a typed answer with an enum status.
    one = c.post_events.sync_detailed(client=ingest, body=m.InvoiceEvent(
        location_id=LOCATION, invoice_id="inv_typed_1", event_id="evt-typed-1"))
    assert one.status_code == 202
    assert isinstance(one.parsed, m.Accepted)
    assert one.parsed.status is m.AcceptedStatus.QUEUED and one.parsed.id
    again = c.post_events.sync(client=ingest, body=m.InvoiceEvent(
        location_id=LOCATION, invoice_id="inv_typed_1", event_id="evt-typed-1"))
    assert (again.id, again.status) == (one.parsed.id, m.AcceptedStatus.DUPLICATE)

    # A batch of an invoice's and an estimate's events: one answer each, in order.
    viewed_at = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
    batch = c.post_events.sync(client=ingest, body=m.Ingest(events=[
        m.InvoiceEvent(location_id=LOCATION, invoice_id="inv_typed_2", viewed_at=viewed_at,
                       source="billing"),
        m.EstimateEvent(location_id=LOCATION, estimate_id="est_typed_1")]))
    assert isinstance(batch, m.AcceptedBatch)
    assert [e.status for e in batch.events] == [m.AcceptedStatus.QUEUED] * 2
    ids = [one.parsed.id, *(e.id for e in batch.events)]
    assert len(set(ids)) == 3

    # Each one's status: typed, and queued (the location has no HighLevel token yet).
    statuses = [c.get_event.sync(client=ingest, event_id=i) for i in ids]
    assert all(isinstance(s, m.EventStatus) for s in statuses)
    assert [(s.id, s.kind, s.document_id, s.status) for s in statuses] == [
        (ids[0], m.EventStatusKind.INVOICE, "inv_typed_1", m.EventStatusStatus.QUEUED),
        (ids[1], m.EventStatusKind.INVOICE, "inv_typed_2", m.EventStatusStatus.QUEUED),
        (ids[2], m.EventStatusKind.ESTIMATE, "est_typed_1", m.EventStatusStatus.QUEUED)]
    first, second, _ = statuses
    assert (first.event_id, first.location_id, first.verdict) == (
        "evt-typed-1", LOCATION, m.EventStatusVerdict.HUMAN)
    assert (second.viewed_at, second.source, second.delivered_at) == (viewed_at, "billing", None)
    assert isinstance(first.received_at, dt.datetime) and first.received_at.tzinfo is not None

    # Refusals, each parsed into the one error model, and nothing recorded for them.
    invalid = c.post_events.sync_detailed(client=ingest, body=m.InvoiceEvent(
        location_id="not an id!", invoice_id="inv_rejected"))
    assert invalid.status_code == 422 and isinstance(invalid.parsed, m.Error)
    assert invalid.parsed.status_code == 422
    assert list(invalid.parsed.errors.additional_properties) == ["locationId"]
    rejected = m.InvoiceEvent(location_id=LOCATION, invoice_id="inv_rejected")
    for key in (None, "ik_not_a_key"):  # none, unknown
        refused = c.post_events.sync_detailed(client=client(key), body=rejected)
        assert refused.status_code == 401, key
        assert isinstance(refused.parsed, m.Error)
        assert (refused.parsed.status_code, refused.parsed.message) == (
            401, "Missing or invalid API key")
    # A key of the wrong kind (made with the generated client): 403 naming the scope.
    reader = c.post_key.sync(client=client(ADMIN_KEY), body=m.KeyCreate(
        name="typed reader", scopes=[m.KeyCreateScopesItem.READ]))
    assert isinstance(reader, m.CreatedKey) and reader.key.startswith(reader.prefix)
    forbidden = c.post_events.sync_detailed(client=client(reader.key), body=rejected)
    assert forbidden.status_code == 403 and isinstance(forbidden.parsed, m.Error)
    assert "events:write" in forbidden.parsed.message
    unread = c.get_event.sync_detailed(client=client(None), event_id=ids[0])
    assert unread.status_code == 401 and isinstance(unread.parsed, m.Error)
    missing = c.get_event.sync(client=ingest, event_id="evt_nowhere")
    assert isinstance(missing, m.Error) and missing.status_code == 404

    # An operator's client stores the token; the forwarder delivers; the status says so.
    stored = c.put_token.sync(client=client(ADMIN_KEY), location_id=LOCATION,
                              body=m.Token(access_token=HL_TOKEN))
    assert isinstance(stored, m.LocationDetail) and stored.location_id == LOCATION

    def all_delivered():
        now = [c.get_event.sync(client=ingest, event_id=i) for i in ids]
        return now if all(s.status is m.EventStatusStatus.DELIVERED for s in now) else None

    delivered = wait_for(all_delivered, timeout=20, what="the typed events' delivery")
    assert all(isinstance(s.delivered_at, dt.datetime) for s in delivered)
    assert {r.document_id for r in fake.requests if r.method == "PATCH"} == {
        "inv_typed_1", "inv_typed_2", "est_typed_1"}
    assert patches_for(fake, "inv_rejected") == []


def test_every_error_is_the_error_model_and_every_keyed_route_declares_its_401_and_403():
    """The rules the generated client relies on, checked on the document alone (fast)."""
    from service import create_app

    from .conftest import test_config

    app = create_app(test_config("sqlite://"))
    spec = app.test_client().get("/openapi.json").json
    app.extensions["service"].engine.dispose()
    responses = spec["components"]["responses"]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    keyed = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            where = f"{method.upper()} {path}"
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rpartition("/")[2]]
                if status == "default" or status[0] in "45":
                    assert response.get("content") == error, (where, status)
            if operation.get("security"):
                keyed += 1
                assert {"401", "403"} <= set(operation["responses"]), where
    assert keyed >= 10  # the ingest and admin routes
    assert spec["components"]["schemas"]["Error"]["required"] == ["message", "statusCode"]
