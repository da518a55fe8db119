"""The console's keys page (list, make with the key shown once, revoke) and signing in to the
console with a stored admin key, whose revocation ends the session."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import admin_headers
from .console import csrf_token, post_form, sign_in, text
from .test_console_session import cookie_payload


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def make_key(client, scopes: list[str], **fields) -> dict:
    resp = client.post("/v1/keys", json={"name": "api made", "scopes": scopes, **fields},
                       headers=admin_headers())
    assert resp.status_code == 201, resp.json
    return resp.json


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


def test_the_keys_page_needs_a_session(client):
    resp = client.get("/console/keys")
    assert resp.status_code == 302 and resp.location.startswith("/console/signin")
    refused = client.post("/console/keys", data={"name": "n", "scopes": "read"})
    assert refused.status_code == 401


def test_the_page_lists_keys_by_prefix_and_never_a_key(signed_in):
    made = make_key(signed_in, ["events:write"], locations=["loc_1"])
    page = signed_in.get("/console/keys")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert 'aria-current="page">Keys<' in page.text
    shown = text(page.text)
    assert "api made" in shown and f"{made['prefix']}…" in shown and "loc_1" in shown
    assert made["key"] not in page.text


def test_making_a_key_shows_it_once(signed_in, client):
    resp = post_form(signed_in, "/console/keys", "/console/keys", name="portal",
                     scopes="events:write", locations="loc_1, loc_2")
    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    assert 'aria-current="page">Keys<' in resp.text
    key = re.search(r'id="new-key-value">(hlr_[A-Za-z0-9_-]{43})<', resp.text)[1]
    assert "only time the relay shows it" in text(resp.text)
    assert client.post("/v1/events", json={"locationId": "loc_2", "invoiceId": "i"},
                       headers=bearer(key)).status_code == 202
    assert client.post("/v1/events", json={"locationId": "loc_3", "invoiceId": "i"},
                       headers=bearer(key)).status_code == 403
    again = signed_in.get("/console/keys")
    assert key not in again.text and "portal" in again.text
    assert key not in json.dumps(cookie_payload(signed_in))  # nor in the session


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "", "scopes": "read"}, "Length must be between 1 and 100."),
    ({"name": "n"}, "Give one or more of events:write, pixels:mint, read, admin"),
    ({"name": "n", "scopes": "read", "locations": "loc_1"}, "Locations limit events:write"),
    ({"name": "n", "scopes": "events:write", "locations": "bad/id"}, "Each location must be"),
])
def test_a_key_that_cannot_be_made_is_shown_back_with_the_reason(signed_in, fields, message):
    resp = post_form(signed_in, "/console/keys", "/console/keys", **fields)
    assert resp.status_code == 422
    assert message in text(resp.text)
    assert "hlr_" not in resp.text
    assert signed_in.get("/v1/keys", headers=admin_headers()).json == {"keys": []}


def test_revoking_a_key_from_the_page(signed_in, client):
    made = make_key(signed_in, ["read"])
    resp = post_form(signed_in, "/console/keys", f"/console/keys/{made['id']}/revoke")
    assert resp.status_code == 302 and resp.location == "/console/keys"
    page = signed_in.get("/console/keys")
    assert f"Key {made['id']} revoked" in text(page.text)
    assert f"/console/keys/{made['id']}/revoke" not in page.text  # no button any more
    assert client.get("/v1/locations", headers=bearer(made["key"])).status_code == 401
    unknown = post_form(signed_in, "/console/keys", "/console/keys/999/revoke")
    assert unknown.status_code == 302
    assert "No key 999" in text(signed_in.get("/console/keys").text)


def test_a_revoke_without_the_csrf_token_changes_nothing(signed_in, client):
    made = make_key(signed_in, ["read"])
    resp = signed_in.post(f"/console/keys/{made['id']}/revoke", data={})
    assert resp.status_code == 400 and "Nothing was changed" in text(resp.text)
    assert client.get("/v1/locations", headers=bearer(made["key"])).status_code == 200


def test_a_stored_admin_key_signs_in_and_its_revocation_ends_the_session(client, app):
    made = make_key(client, ["admin"])
    browser = app.test_client()
    assert sign_in(browser, key=made["key"]).status_code == 302
    assert browser.get("/console/keys").status_code == 200
    held = json.dumps(cookie_payload(browser))
    assert made["key"] not in held and made["key"][4:20] not in held
    assert client.delete(f"/v1/keys/{made['id']}", headers=admin_headers()).status_code == 204
    ended = browser.get("/console/keys")  # the next request: no cache, no wait
    assert ended.status_code == 302 and ended.location.startswith("/console/signin")
    assert sign_in(app.test_client(), key=made["key"]).status_code == 401


def test_a_stored_key_without_admin_does_not_open_the_console(client, app):
    made = make_key(client, ["read", "events:write", "pixels:mint"])
    resp = sign_in(app.test_client(), key=made["key"])
    assert resp.status_code == 401 and "not an admin key" in resp.text


def test_the_form_needs_its_csrf_token(signed_in):
    page = signed_in.get("/console/keys")
    token = csrf_token(page.text)
    assert signed_in.post("/console/keys", data={"name": "n", "scopes": "read"}).status_code \
        == 400
    assert signed_in.post("/console/keys", data={"csrf_token": token, "name": "n",
                                                 "scopes": "read"}).status_code == 201
