"""Keys kept in the store, with scopes: /v1/keys, 401 versus 403 on every keyed route,
location-limited keys, environment keys beside them, and the command line (revocation
across processes: test_keys_revocation.py)."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from service.store.db import api_keys, events

from .conftest import ADMIN_KEY, INGEST_KEY, admin_headers, make_event

UNAUTHORIZED = {"statusCode": 401, "message": "Missing or invalid API key"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def make_key(client, scopes: list[str], **fields) -> dict:
    """A stored key made through the API; the answer (``key`` included)."""
    resp = client.post("/v1/keys", json={"name": "test key", "scopes": scopes, **fields},
                       headers=admin_headers())
    assert resp.status_code == 201, resp.json
    return resp.json


def stored_events(services) -> int:
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()


# -- POST, GET, DELETE /v1/keys ------------------------------------------------------------


def test_a_key_is_shown_once_and_listed_by_its_prefix_only(client, services, caplog, clock):
    caplog.set_level(logging.DEBUG)
    made = make_key(client, ["events:write"], locations=["loc_b", "loc_a"])
    key = made.pop("key")
    assert key.startswith("hlr_") and len(key) == 47
    assert made == {"id": made["id"], "name": "test key", "prefix": key[:12],
                    "scopes": ["events:write"], "locations": ["loc_a", "loc_b"],
                    "createdAt": clock().isoformat(), "lastUsedAt": None, "revokedAt": None}
    listed = client.get("/v1/keys", headers=admin_headers())
    assert listed.status_code == 200
    assert listed.json == {"keys": [made]}
    assert key not in listed.text and key[12:] not in listed.text
    with services.engine.connect() as conn:  # the store keeps a hash, not the key
        row = conn.execute(sa.select(api_keys)).one()
    assert key not in repr(tuple(row)) and len(row.hash) == 64
    assert key not in caplog.text and key[:12] not in caplog.text
    assert "apikey.created" in caplog.text


def test_keys_are_listed_newest_first_with_their_revocation(client, clock):
    first = make_key(client, ["read"])
    second = make_key(client, ["pixels:mint", "admin"])
    assert client.delete(f"/v1/keys/{first['id']}", headers=admin_headers()).status_code == 204
    revoked_at = clock().isoformat()
    clock.advance(5)
    # Revoking again keeps the first time (and is not an error).
    assert client.delete(f"/v1/keys/{first['id']}", headers=admin_headers()).status_code == 204
    listed = client.get("/v1/keys", headers=admin_headers()).json["keys"]
    assert [k["id"] for k in listed] == [second["id"], first["id"]]
    assert listed[0]["scopes"] == ["pixels:mint", "admin"] and listed[0]["revokedAt"] is None
    assert listed[1]["revokedAt"] == revoked_at


@pytest.mark.parametrize("path", ["/v1/keys/999", "/v1/keys/0", f"/v1/keys/{2**70}",
                                  "/v1/keys/abc"])
def test_revoking_a_key_that_is_not_there_is_404(client, path):
    resp = client.delete(path, headers=admin_headers())
    assert resp.status_code == 404 and resp.json["statusCode"] == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"scopes": ["read"]}, "name"),
    ({"name": "", "scopes": ["read"]}, "name"),
    ({"name": "x" * 101, "scopes": ["read"]}, "name"),
    ({"name": "two\nlines", "scopes": ["read"]}, "name"),
    ({"name": "a\x00b", "scopes": ["read"]}, "name"),
    ({"name": "n"}, "scopes"),
    ({"name": "n", "scopes": []}, "scopes"),
    ({"name": "n", "scopes": ["events:read"]}, "scopes"),
    ({"name": "n", "scopes": "read"}, "scopes"),
    ({"name": "n", "scopes": ["read"], "locations": ["loc_1"]}, "locations"),
    ({"name": "n", "scopes": ["pixels:mint"], "locations": ["loc_1"]}, "locations"),
    ({"name": "n", "scopes": ["events:write", "admin"], "locations": ["loc_1"]}, "locations"),
    ({"name": "n", "scopes": ["events:write"], "locations": []}, "locations"),
    ({"name": "n", "scopes": ["events:write"], "locations": ["bad id"]}, "locations"),
    ({"name": "n", "scopes": ["events:write"], "locations": ["x" * 65]}, "locations"),
    ({"name": "n", "scopes": ["events:write"], "locations": [f"l{i}" for i in range(101)]},
     "locations"),
    ({"name": "n", "scopes": ["read"], "key": "hlr_mine"}, "key"),
])
def test_a_key_that_cannot_be_made_is_422_naming_the_field(client, body, field):
    resp = client.post("/v1/keys", json=body, headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]
    assert client.get("/v1/keys", headers=admin_headers()).json == {"keys": []}


def test_keys_are_managed_with_admin_only(client):
    reader = make_key(client, ["read", "events:write", "pixels:mint"])["key"]
    for method, path in [("POST", "/v1/keys"), ("GET", "/v1/keys"), ("DELETE", "/v1/keys/1")]:
        resp = client.open(path, method=method, json={"name": "n", "scopes": ["admin"]},
                           headers=bearer(reader))
        assert resp.status_code == 403
        assert resp.json["message"] == "This key lacks the scope admin"
        assert client.open(path, method=method, headers=bearer(INGEST_KEY)).status_code == 403
    admin = make_key(client, ["admin"])["key"]  # a stored admin key makes keys too
    resp = client.post("/v1/keys", json={"name": "n", "scopes": ["read"]}, headers=bearer(admin))
    assert resp.status_code == 201


# -- 401 versus 403, route by route -----------------------------------------------------

# (method, path, body, the scopes that open it)
ROUTES = [
    ("POST", "/v1/events", make_event(), {"events:write"}),
    ("GET", "/v1/events/unknown", None, {"events:write", "read"}),
    ("POST", "/v1/pixel-urls", {"locationId": "loc_1", "invoiceId": "inv_1"}, {"pixels:mint"}),
    ("GET", "/v1/locations", None, {"read"}),
    ("GET", "/v1/locations/loc_1", None, {"read"}),
    ("GET", "/v1/deliveries", None, {"read"}),
    ("PUT", "/v1/locations/loc_1/token", {"accessToken": "pit-0123456789"}, set()),
    ("DELETE", "/v1/locations/loc_1/token", None, set()),
    ("DELETE", "/v1/locations/loc_1", None, set()),
    ("POST", "/v1/deliveries/replay", {"all": True, "dryRun": True}, set()),
    ("GET", "/v1/keys", None, set()),
]
ONE_SCOPE = ["events:write", "pixels:mint", "read", "admin"]


@pytest.mark.parametrize(("method", "path", "body", "opens"), ROUTES,
                         ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_is_401_without_a_working_key_and_403_without_its_scope(
        client, method, path, body, opens):
    revoked = make_key(client, ["admin"])
    assert client.delete(f"/v1/keys/{revoked['id']}", headers=admin_headers()).status_code == 204
    for headers in [{}, bearer("hlr_" + "x" * 43), bearer("hlr_short"), bearer("ik_unknown"),
                    bearer(revoked["key"]), {"Authorization": "Basic abc"},
                    bearer("x" * 5000)]:
        resp = client.open(path, method=method, json=body, headers=headers)
        assert resp.status_code == 401, (headers, resp.json)
        assert resp.json == UNAUTHORIZED
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for scope in ONE_SCOPE:
        key = make_key(client, [scope])["key"]
        resp = client.open(path, method=method, json=body, headers=bearer(key))
        if scope in opens or scope == "admin":
            assert resp.status_code not in (401, 403), (scope, resp.json)
        else:
            assert resp.status_code == 403, (scope, resp.json)
            needed = " or ".join(s for s in ONE_SCOPE if s in opens) or "admin"
            assert resp.json == {"statusCode": 403,
                                 "message": f"This key lacks the scope {needed}"}


def test_environment_keys_keep_working_beside_stored_ones(client, services):
    assert client.post("/v1/events", json=make_event(), headers=bearer(INGEST_KEY)
                       ).status_code == 202
    # The admin key holds every scope now, ingest included.
    assert client.post("/v1/events", json=make_event(invoiceId="inv_2"),
                       headers=bearer(ADMIN_KEY)).status_code == 202
    refused = client.post("/v1/pixel-urls", json={"locationId": "loc_1", "invoiceId": "i"},
                          headers=bearer(INGEST_KEY))
    assert refused.status_code == 403
    assert refused.json["message"] == "This key lacks the scope pixels:mint"
    assert stored_events(services) == 2


def test_the_openapi_document_names_each_operations_scopes(client):
    spec = client.get("/openapi.json").json
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert scheme["scheme"] == "bearer"
    for scope in ONE_SCOPE:
        assert f"`{scope}`" in scheme["description"]
    paths = spec["paths"]
    for method, path, _, opens in ROUTES:
        operation = paths[path.replace("unknown", "{event_id}").replace("loc_1", "{location_id}")
                          ][method.lower()]
        assert operation["security"] == [{"apiKey": []}]
        assert set(operation["x-scopes"]) == (opens or {"admin"})
    assert paths["/v1/keys/{key_id}"]["delete"]["x-scopes"] == ["admin"]


# -- keys limited to locations ---------------------------------------------------------


def test_a_location_limited_key_posts_only_for_its_locations(client, services):
    key = make_key(client, ["events:write"], locations=["loc_1", "loc_2"])["key"]
    assert client.post("/v1/events", json=make_event(), headers=bearer(key)).status_code == 202
    refused = client.post("/v1/events", json=make_event(locationId="loc_9"), headers=bearer(key))
    assert refused.status_code == 403
    assert refused.json == {"statusCode": 403, "errors": {"locationId": ["loc_9"]},
                            "message": "This key may not post events for location loc_9"}
    batch = {"events": [make_event(locationId="loc_2"), make_event(locationId="loc_8"),
                        make_event(locationId="loc_7"), make_event(locationId="loc_1")]}
    refused = client.post("/v1/events", json=batch, headers=bearer(key))
    assert refused.status_code == 403
    assert refused.json["message"] == "This key may not post events for location loc_7, loc_8"
    assert stored_events(services) == 1  # all or nothing: the batch stored nothing


def test_a_location_limited_key_reads_only_its_locations_events(client):
    key = make_key(client, ["events:write"], locations=["loc_1"])["key"]
    reader = make_key(client, ["read"])["key"]
    mine = client.post("/v1/events", json=make_event(), headers=bearer(key)).json["id"]
    other = client.post("/v1/events", json=make_event(locationId="loc_2"),
                        headers=bearer(INGEST_KEY)).json["id"]
    assert client.get(f"/v1/events/{mine}", headers=bearer(key)).json["status"] == "queued"
    hidden = client.get(f"/v1/events/{other}", headers=bearer(key))
    missing = client.get("/v1/events/no-such-event", headers=bearer(key))
    assert (hidden.status_code, hidden.json) == (missing.status_code, missing.json)
    assert hidden.status_code == 404
    for event_id in (mine, other):  # read, and the environment's ingest key, see every one
        for headers in (bearer(reader), bearer(INGEST_KEY)):
            assert client.get(f"/v1/events/{event_id}", headers=headers).status_code == 200


# -- the command line --------------------------------------------------------------------


def test_cli_makes_lists_and_revokes_keys(runner, client):
    made = runner.invoke(args=["keys", "create", "--name", "portal", "--scope", "events:write",
                               "--location", "loc_1", "--location", "loc_2"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]  # the last line of stdout, alone
    assert key.startswith("hlr_") and len(key) == 47
    assert "Shown once" in made.stderr and key not in made.stderr
    assert client.post("/v1/events", json=make_event(), headers=bearer(key)).status_code == 202
    listed = runner.invoke(args=["keys", "list"])
    assert listed.exit_code == 0
    assert "portal" in listed.output and key[:12] in listed.output
    assert key not in listed.output and "loc_1,loc_2" in listed.output
    key_id = listed.output.split("\t")[0]
    revoked = runner.invoke(args=["keys", "revoke", key_id])
    assert revoked.exit_code == 0 and f"revoked key {key_id}" in revoked.output
    assert client.post("/v1/events", json=make_event(), headers=bearer(key)).status_code == 401
    assert "\tactive" not in runner.invoke(args=["keys", "list"]).output


@pytest.mark.parametrize("args", [
    ["--name", "n", "--scope", "events:read"],
    ["--name", "n"],
    ["--name", "n", "--scope", "read", "--location", "loc_1"],
    ["--name", "n", "--scope", "events:write", "--location", "bad id"],
    ["--name", "", "--scope", "read"],
])
def test_cli_refuses_a_key_that_cannot_be_made(runner, args):
    result = runner.invoke(args=["keys", "create", *args])
    assert result.exit_code == 2, result.output
    assert "hlr_" not in result.output
    assert runner.invoke(args=["keys", "list"]).output.strip() == "no keys stored"


def test_cli_revoking_an_unknown_key_fails(runner):
    result = runner.invoke(args=["keys", "revoke", "42"])
    assert result.exit_code == 1 and "no key 42" in result.output
