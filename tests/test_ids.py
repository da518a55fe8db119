"""Ids are checked in full, by one rule, wherever they come in (issue 13, item 2).

Python's ``$`` matches before a final newline, so a ``^...$`` pattern used with ``re.match``
let ``"LOC\\n"`` through: stored as a location, minted into a pixel URL, and a 64-character
id plus the newline was a 500 on PostgreSQL (``varchar(64)``). Each case below runs on
SQLite and, with TEST_DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.ids import ID_PATTERN, is_valid_id
from service.store.db import events, locations

from .conftest import admin_headers, ingest_headers, make_event

TOKEN = "pit-ids-test-token-0123"
NEWLINE_IDS = ["NLLOC\n", "x" * 64 + "\n", "\nNLLOC", "a\nb"]


def stored_rows(services) -> dict:
    with services.engine.connect() as conn:
        return {table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                for table in (events, locations)}


def quoted(value: str) -> str:
    return value.replace("\n", "%0A")


@pytest.mark.parametrize("value", [
    "a", "A-z_0", "x" * 64,
])
def test_ids_that_follow_the_rule(value):
    assert is_valid_id(value)


@pytest.mark.parametrize("value", [
    "", "x" * 65, "has space", "inv/1", "NLLOC\n", "x" * 64 + "\n", "\nx", "é", None, 12,
])
def test_ids_that_break_the_rule(value):
    assert not is_valid_id(value)


@pytest.mark.parametrize("location_id", NEWLINE_IDS)
@pytest.mark.parametrize(("method", "suffix"), [
    ("PUT", "/token"), ("DELETE", "/token"), ("GET", ""),
])
def test_newline_in_a_location_path_is_400_and_stores_nothing(client, services, location_id,
                                                               method, suffix):
    resp = client.open(f"/v1/locations/{quoted(location_id)}{suffix}", method=method,
                       json={"accessToken": TOKEN} if method == "PUT" else None,
                       headers=admin_headers())
    assert resp.status_code == 400, resp.json
    assert resp.json["statusCode"] == 400
    assert resp.json["message"] == "locationId must be 1-64 characters of A-Z a-z 0-9 _ -"
    assert "locationId" in resp.json["errors"]
    assert stored_rows(services) == {"events": 0, "locations": 0}


@pytest.mark.parametrize("value", NEWLINE_IDS)
@pytest.mark.parametrize("field", ["locationId", "invoiceId", "estimateId", "eventId"])
def test_newline_in_an_event_id_field_is_422_and_stores_nothing(client, services, field,
                                                                 value):
    event = make_event(**{field: value})
    if field == "estimateId":
        event.pop("invoiceId")
    for body in (event, {"events": [make_event(), event]}):
        resp = client.post("/v1/events", json=body, headers=ingest_headers())
        assert resp.status_code == 422, resp.json
        assert resp.json["message"] == "The request body is not valid"
        errors = resp.json["errors"]
        assert field in (errors if "events" not in body else errors["events"]["1"]), errors
    assert stored_rows(services) == {"events": 0, "locations": 0}


@pytest.mark.parametrize("value", NEWLINE_IDS)
@pytest.mark.parametrize("field", ["locationId", "invoiceId", "estimateId"])
def test_newline_in_a_pixel_url_request_is_422_and_mints_nothing(client, field, value):
    body = {"locationId": "loc_1", "invoiceId": "inv_1"}
    if field == "estimateId":
        body.pop("invoiceId")
    resp = client.post("/v1/pixel-urls", json={**body, field: value}, headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]
    assert "url" not in resp.json


@pytest.mark.parametrize("value", NEWLINE_IDS)
def test_newline_in_a_company_id_is_422_and_stores_nothing(client, services, value):
    resp = client.put("/v1/locations/loc_1/token", json={"accessToken": TOKEN, "companyId": value},
                      headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert "companyId" in resp.json["errors"]
    assert stored_rows(services) == {"events": 0, "locations": 0}


@pytest.mark.parametrize("field", ["locationId", "documentId"])
def test_newline_in_a_delivery_filter_is_422(client, field):
    resp = client.get("/v1/deliveries", query_string={field: "x" * 64 + "\n"},
                      headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]
    resp = client.post("/v1/deliveries/replay", json={field: "x" * 64 + "\n"},
                       headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]


def test_the_cli_refuses_a_newline_id(runner, services):
    result = runner.invoke(args=["tokens", "set", "NLLOC\n", "--access-token", TOKEN])
    assert result.exit_code != 0
    assert "1-64 characters" in result.output
    result = runner.invoke(args=["pixel-url", "loc_1", "inv_1\n"])
    assert result.exit_code != 0 and "/v1/pixel/" not in result.output
    assert stored_rows(services) == {"events": 0, "locations": 0}


def test_openapi_states_the_anchored_pattern_for_every_id(client):
    spec = client.get("/openapi.json").json
    schemas = spec["components"]["schemas"]
    fields = {"Event": ["locationId", "invoiceId", "estimateId", "eventId"],
              "PixelUrlRequest": ["locationId", "invoiceId", "estimateId"],
              "Token": ["companyId"], "Replay": ["locationId", "documentId"]}
    for name, names in fields.items():
        for field in names:
            assert schemas[name]["properties"][field]["pattern"] == ID_PATTERN, (name, field)
    query = {p["name"]: p for p in spec["paths"]["/v1/deliveries"]["get"]["parameters"]}
    assert query["locationId"]["schema"]["pattern"] == ID_PATTERN
    for path in ("/v1/locations/{location_id}", "/v1/locations/{location_id}/token"):
        operations = spec["paths"][path]
        params = [p for op in operations.values() if isinstance(op, dict)
                  for p in op.get("parameters", [])] + operations.get("parameters", [])
        [param] = {p["name"]: p for p in params if p["in"] == "path"}.values()
        assert param["schema"]["pattern"] == ID_PATTERN, path
    assert ID_PATTERN == "^[A-Za-z0-9_-]{1,64}$"
