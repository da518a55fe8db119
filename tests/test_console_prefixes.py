"""The console's location pixels: a location's prefixes listed on its page, minted (the URL
template shown once) and revoked with forms that carry their CSRF token."""

from __future__ import annotations

import html
import re

import pytest

from .conftest import T0, admin_headers
from .console import csrf_token, post_form, sign_in, text
from .test_pixel import CHROME, assert_gif
from .test_pixel_prefixes import BASE, pixel, viewed

LOC = "loc_console"
PAGE = f"/console/locations/{LOC}"
TEMPLATE = re.compile(r'id="url-template" readonly value="([^"]+)"')


@pytest.fixture
def console(client, vault):
    vault.set_token(LOC, access_token="pit-console-" + "t" * 24, now=T0)  # the page exists
    sign_in(client)
    return client


def mint(console, **fields: str):
    return post_form(console, PAGE, f"{PAGE}/pixel-prefixes", **fields)


def test_mint_shows_the_url_template_once_and_it_records(console, services):
    page = console.get(PAGE).text
    assert "No prefix: this location has not opted in." in text(page)
    resp = mint(console, kind="estimate", name="ESP template")
    assert resp.status_code == 200
    template = html.unescape(TEMPLATE.search(resp.text)[1])
    assert template.startswith(BASE + "/v1/pixel/l/") and template.endswith(
        "/{documentId}.gif")
    assert "{{estimate.id}}" in html.unescape(resp.text)
    [prefix_id] = re.findall(r"<code>(pp_[0-9a-f]+)</code>", resp.text)
    assert f"{prefix_id} estimate ESP template 2026-01-05 12:00:00 UTC active" in text(
        resp.text)

    again = console.get(PAGE).text
    prefix = template.removeprefix(BASE + "/v1/pixel/l/").split("/")[0]
    assert prefix not in again and prefix.rpartition(".")[2] not in again
    assert prefix_id in again  # listed by its id, never by the prefix

    assert_gif(console.get(pixel(template, "EST-1"), headers={"User-Agent": CHROME}))
    assert viewed(services)[0][:3] == ("estimate", LOC, "EST-1")


def test_revoke_button_revokes_and_the_urls_record_nothing(console, client, services):
    template = html.unescape(TEMPLATE.search(mint(console, kind="invoice").text)[1])
    [prefix_id] = re.findall(r"<code>(pp_[0-9a-f]+)</code>", console.get(PAGE).text)
    resp = post_form(console, PAGE, f"{PAGE}/pixel-prefixes/{prefix_id}/revoke")
    assert resp.status_code == 302 and resp.headers["Location"].endswith(PAGE)
    page = console.get(PAGE).text
    assert f"Pixel prefix {prefix_id} revoked" in text(page)
    assert "revoked 2026-01-05 12:00:00 UTC" in text(page)
    assert f"Revoke prefix {prefix_id}" not in page  # no button for a revoked one
    assert_gif(console.get(pixel(template, "INV-1"), headers={"User-Agent": CHROME}))
    assert viewed(services) == []
    api = client.get(f"/v1/locations/{LOC}/pixel-prefixes", headers=admin_headers()).json
    assert api["prefixes"][0]["revokedAt"] is not None


def test_revoking_another_locations_prefix_changes_nothing(console, client, services):
    other = client.post("/v1/locations/loc_other/pixel-prefixes", json={"kind": "invoice"},
                        headers=admin_headers()).json
    resp = post_form(console, PAGE, f"{PAGE}/pixel-prefixes/{other['id']}/revoke")
    assert resp.status_code == 302
    assert "no such pixel prefix" in text(console.get(PAGE).text)
    listed = client.get("/v1/locations/loc_other/pixel-prefixes", headers=admin_headers())
    assert listed.json["prefixes"][0]["revokedAt"] is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "order"}, "Must be one of"),
    ({"kind": "invoice", "name": "x" * 101}, "Length must be between"),
])
def test_a_bad_form_is_422_and_mints_nothing(console, client, fields, message):
    resp = mint(console, **fields)
    assert resp.status_code == 422 and message in text(resp.text)
    assert 'aria-invalid="true"' in resp.text
    listed = client.get(f"/v1/locations/{LOC}/pixel-prefixes", headers=admin_headers())
    assert listed.json == {"prefixes": []}


def test_forms_without_their_csrf_token_change_nothing(console, client):
    page = console.get(PAGE).text
    assert csrf_token(page)
    resp = console.post(f"{PAGE}/pixel-prefixes", data={"kind": "invoice"})
    assert resp.status_code == 400 and "Nothing was changed" in text(resp.text)
    minted = client.post(f"/v1/locations/{LOC}/pixel-prefixes", json={"kind": "invoice"},
                         headers=admin_headers()).json
    resp = console.post(f"{PAGE}/pixel-prefixes/{minted['id']}/revoke", data={})
    assert resp.status_code == 400
    listed = client.get(f"/v1/locations/{LOC}/pixel-prefixes", headers=admin_headers())
    assert [p["revokedAt"] for p in listed.json["prefixes"]] == [None]


def test_signed_out_the_forms_are_refused(client, vault):
    vault.set_token(LOC, access_token="pit-console-" + "t" * 24, now=T0)
    resp = client.post(f"{PAGE}/pixel-prefixes", data={"kind": "invoice"})
    assert resp.status_code == 401
    listed = client.get(f"/v1/locations/{LOC}/pixel-prefixes", headers=admin_headers())
    assert listed.json == {"prefixes": []}
