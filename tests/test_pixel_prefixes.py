"""Location pixels for templated emails: a prefix per location and kind, any document id
after it. Minted, listed and revoked through the API and the CLI; pixels through HTTP (the
pixel's front door), asserted on the stored events and the queue, on both stores."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import create_app
from service.ingest.pixels import PixelSigner, PixelTarget
from service.ingest.prefixes import RECHECK, LocationPixels, PrefixClaim, PrefixSigner
from service.store.db import events

from .conftest import PIXEL_KEY, T0, admin_headers, test_config
from .test_pixel import CHROME, GIF_HEADERS, assert_gif

LOC, OTHER = "6578278e879ad2646715ba9c", "loc_other"
BASE = "http://localhost:8000"
PREFIXES = f"/v1/locations/{LOC}/pixel-prefixes"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


def mint(client, location=LOC, **body) -> dict:
    resp = client.post(f"/v1/locations/{location}/pixel-prefixes",
                       json={"kind": "invoice", **body}, headers=admin_headers())
    assert resp.status_code == 201, resp.json
    return resp.json


def pixel(template: str, document_id: str) -> str:
    """The path of the pixel for ``document_id`` under a minted URL template."""
    assert template.startswith(BASE + "/v1/pixel/l/")
    return template.replace("{documentId}", quote(document_id, safe="")).removeprefix(BASE)


def prefix_of(template: str) -> str:
    return template.removeprefix(BASE + "/v1/pixel/l/").removesuffix("/{documentId}.gif")


def viewed(services) -> list:
    """Every stored view: (kind, location, document, source, verdict, forward, views)."""
    e = events.c
    with services.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(
            e.kind, e.location_id, e.document_id, e.source, e.verdict, e.forward, e.views
        ).order_by(e.received_at, e.id))]


def get(client, path: str, **headers):
    return client.get(path, headers={"User-Agent": CHROME, **headers})


def test_mint_then_any_document_id_records_a_view_of_it(client, services):
    minted = mint(client, name="HighLevel invoice template")
    assert minted["kind"] == "invoice" and minted["name"] == "HighLevel invoice template"
    assert minted["id"].startswith("pp_") and minted["revokedAt"] is None
    assert minted["urlTemplate"].endswith("/{documentId}.gif")
    assert f'src="{minted["urlTemplate"].replace("{documentId}", "{{invoice.id}}")}"' \
        in minted["html"]
    for attr in ('width="1"', 'height="1"', 'alt=""'):
        assert attr in minted["html"]

    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-123")))
    assert_gif(get(client, pixel(minted["urlTemplate"], "6578278e879ad2646715ba9d")))
    assert sorted(viewed(services)) == [
        ("invoice", LOC, "6578278e879ad2646715ba9d", "location-pixel", "human", True, 1),
        ("invoice", LOC, "INV-123", "location-pixel", "human", True, 1)]
    claims = services.store.claim_due(now=services.clock(), limit=5)
    assert sorted((c.kind, c.location_id, c.document_id) for c in claims) == [
        ("invoice", LOC, "6578278e879ad2646715ba9d"), ("invoice", LOC, "INV-123")]


def test_estimate_prefix_records_estimate_views(client, services):
    minted = mint(client, kind="estimate")
    assert "{{estimate.id}}" in minted["html"]
    assert_gif(get(client, pixel(minted["urlTemplate"], "EST-9")))
    [claim] = services.store.claim_due(now=services.clock(), limit=5)
    assert (claim.kind, claim.location_id, claim.document_id) == ("estimate", LOC, "EST-9")


def test_revoked_prefix_still_answers_the_gif_and_records_nothing(client, services):
    minted = mint(client)
    other = mint(client)  # a second prefix of the location is not touched
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert len(viewed(services)) == 1

    resp = client.delete(f"{PREFIXES}/{minted['id']}", headers=admin_headers())
    assert resp.status_code == 204 and resp.data == b""
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-2")))
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert [v[2] for v in viewed(services)] == ["INV-1"]
    assert_gif(get(client, pixel(other["urlTemplate"], "INV-3")))
    assert sorted(v[2] for v in viewed(services)) == ["INV-1", "INV-3"]

    listed = {p["id"]: p for p in client.get(PREFIXES, headers=admin_headers()).json[
        "prefixes"]}
    assert {i: p["revokedAt"] is not None for i, p in listed.items()} == {
        minted["id"]: True, other["id"]: False}
    services.clock.advance(60)
    again = client.delete(f"{PREFIXES}/{minted['id']}", headers=admin_headers())
    assert again.status_code == 204  # idempotent; revokedAt kept
    assert [p for p in client.get(PREFIXES, headers=admin_headers()).json["prefixes"]
            if p["id"] == minted["id"]] == [listed[minted["id"]]]


def test_a_revocation_reaches_another_web_process_without_a_restart(
        app, client, services, migrated_db_url, clock):
    """Another process (its own app and cache, the same store) stops recording within
    ``RECHECK`` of a revocation made elsewhere; the clock is moved, nothing sleeps."""
    other = create_app(test_config(migrated_db_url))
    other_svc = other.extensions["service"]
    other_svc.clock = clock
    try:
        elsewhere = other.test_client()
        minted = mint(client)
        assert_gif(get(elsewhere, pixel(minted["urlTemplate"], "INV-1")))  # now it knows
        assert client.delete(f"{PREFIXES}/{minted['id']}",
                             headers=admin_headers()).status_code == 204
        clock.advance(RECHECK.total_seconds() + 0.5)
        assert_gif(get(elsewhere, pixel(minted["urlTemplate"], "INV-2")))
        assert [v[2] for v in viewed(services)] == ["INV-1"]
    finally:
        other_svc.engine.dispose()


def forged(prefix: str) -> str:
    return prefix[:-3] + ("AAA" if not prefix.endswith("AAA") else "BBB")


@pytest.mark.parametrize("make_path", [
    lambda p, row: f"/v1/pixel/l/{forged(p)}/INV-1.gif",
    lambda p, row: f"/v1/pixel/l/{p[:-10]}/INV-1.gif",  # truncated
    lambda p, row: "/v1/pixel/l/{}/INV-1.gif".format(
        PrefixSigner(["some-other-key"]).sign(PrefixClaim(row, LOC, "invoice"))),
    # A pixel token where a prefix goes, and a prefix where a pixel token goes: the salts
    # differ, so neither passes for the other (their payloads have the same shape).
    lambda p, row: "/v1/pixel/l/{}/INV-1.gif".format(
        PixelSigner([PIXEL_KEY]).sign(PixelTarget("invoice", LOC, row))),
    lambda p, row: f"/v1/pixel/{p}.gif",
    # A genuine signature over a prefix id that has no row.
    lambda p, row: "/v1/pixel/l/{}/INV-1.gif".format(
        PrefixSigner([PIXEL_KEY]).sign(PrefixClaim("pp_000000000000", LOC, "invoice"))),
    # The row's id signed as an estimate prefix: the row says invoice.
    lambda p, row: "/v1/pixel/l/{}/INV-1.gif".format(
        PrefixSigner([PIXEL_KEY]).sign(PrefixClaim(row, LOC, "estimate"))),
])
def test_forged_or_mismatched_prefixes_record_nothing(client, services, make_path):
    minted = mint(client)
    prefix = prefix_of(minted["urlTemplate"])
    assert_gif(get(client, make_path(prefix, minted["id"])))
    assert viewed(services) == []


def test_a_prefix_of_one_location_cannot_record_for_another(client, services):
    mine = mint(client)
    theirs = mint(client, location=OTHER)
    # Even signed with the right key, a claim naming another location than the row's is
    # refused (the row is checked, not only the signature).
    crossed = PrefixSigner([PIXEL_KEY]).sign(PrefixClaim(mine["id"], OTHER, "invoice"))
    assert_gif(get(client, f"/v1/pixel/l/{crossed}/INV-1.gif"))
    assert viewed(services) == []
    # Another location's path cannot list or revoke it.
    listed = client.get(f"/v1/locations/{OTHER}/pixel-prefixes", headers=admin_headers())
    assert [p["id"] for p in listed.json["prefixes"]] == [theirs["id"]]
    resp = client.delete(f"/v1/locations/{OTHER}/pixel-prefixes/{mine['id']}",
                         headers=admin_headers())
    assert resp.status_code == 404 and resp.json["statusCode"] == 404
    assert_gif(get(client, pixel(mine["urlTemplate"], "INV-1")))
    assert_gif(get(client, pixel(theirs["urlTemplate"], "INV-1")))
    assert sorted(v[1] for v in viewed(services)) == sorted([LOC, OTHER])


@pytest.mark.parametrize("document_id", [
    "bad id", "a" * 65, "{{invoice.id}}", "INV.1", "inv\n", "%00", "é",
])
def test_a_document_id_that_breaks_the_id_rule_records_nothing(client, services,
                                                                  document_id):
    minted = mint(client)
    assert_gif(get(client, pixel(minted["urlTemplate"], document_id)))
    assert viewed(services) == []


@pytest.mark.parametrize("suffix", ["", "/INV-1", "/INV-1.png", "/INV-1/x.gif", "//INV-1.gif",
                                    "/.gif"])
def test_other_paths_under_a_prefix_get_the_gif_and_record_nothing(client, services, suffix):
    prefix = prefix_of(mint(client)["urlTemplate"])
    assert_gif(get(client, f"/v1/pixel/l/{prefix}{suffix}"))
    assert viewed(services) == []


def test_head_gets_the_gif_headers_and_records_nothing(client, services):
    minted = mint(client)
    resp = client.head(pixel(minted["urlTemplate"], "INV-1"))
    assert resp.status_code == 200 and resp.data == b""
    for name, value in GIF_HEADERS.items():
        assert resp.headers[name] == value, name
    assert viewed(services) == []


@pytest.mark.parametrize("headers", [{"Purpose": "prefetch"}, {"Sec-Purpose": "prefetch"},
                                     {"X-Purpose": "preview"}, {"X-Moz": "prefetch"}])
def test_prefetches_record_nothing(client, services, headers):
    minted = mint(client)
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1"), **headers))
    assert viewed(services) == []


@pytest.mark.parametrize(("user_agent", "verdict", "forwarded"), [
    (GMAIL, "proxy_open", True),  # Gmail's image proxy: a person opened it
    ("Mozilla/5.0", "machine_prefetch", False),  # MACHINE_OPENS=skip keeps it here
])
def test_machine_opens_get_the_same_verdicts_as_signed_pixels(client, services, user_agent,
                                                               verdict, forwarded):
    minted = mint(client)
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1"), **{"User-Agent": user_agent}))
    [(_, _, document, source, got, forward, _)] = viewed(services)
    assert (document, source, got, forward) == ("INV-1", "location-pixel", verdict, forwarded)
    assert services.store.queue_depth() == ({"pending": 1} if forwarded else {})


def test_repeats_from_one_client_are_coalesced(client, services):
    minted = mint(client)
    for _ in range(3):
        assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-2")))
    assert sorted((v[2], v[6]) for v in viewed(services)) == [("INV-1", 3), ("INV-2", 1)]


def test_the_pixel_is_answered_before_flask(app, client, services):
    seen = []
    app.before_request(lambda: seen.append(1))
    minted = mint(client)
    seen.clear()
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert seen == [] and len(viewed(services)) == 1


def test_key_rotation_keeps_old_prefixes_working(client, services):
    minted = mint(client)
    services.location_pixels = LocationPixels(["new-key", PIXEL_KEY], services.engine)
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    rotated = mint(client)
    assert PrefixSigner(["new-key"]).verify(prefix_of(rotated["urlTemplate"])) is not None
    services.location_pixels = LocationPixels(["new-key"], services.engine)  # old retired
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-2")))
    assert [v[2] for v in viewed(services)] == ["INV-1"]


def test_the_prefix_is_shown_once_and_never_logged(client, services, caplog):
    caplog.set_level(logging.INFO)
    minted = mint(client)
    prefix = prefix_of(minted["urlTemplate"])
    signature = prefix.rpartition(".")[2]
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert_gif(get(client, f"/v1/pixel/l/{forged(prefix)}/INV-1.gif"))
    listed = client.get(PREFIXES, headers=admin_headers())
    assert signature not in listed.text and "urlTemplate" not in listed.json["prefixes"][0]
    client.delete(f"{PREFIXES}/{minted['id']}", headers=admin_headers())
    bad = client.delete(f"{PREFIXES}/{prefix}", headers=admin_headers())  # pasted by mistake
    assert bad.status_code == 400 and signature not in bad.text
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "pixel_prefix.minted" in logged and "pixel_prefix.revoked" in logged
    assert signature not in logged and forged(prefix)[-12:] not in logged


@pytest.mark.parametrize(("location", "body", "field"), [
    (LOC, {"kind": "order"}, "kind"),
    (LOC, {}, "kind"),
    (LOC, {"kind": "invoice", "name": ""}, "name"),
    (LOC, {"kind": "invoice", "name": "x" * 101}, "name"),
    (LOC, {"kind": "invoice", "name": "a\x00b"}, "name"),
    (LOC, {"kind": "invoice", "locationId": OTHER}, "locationId"),  # unknown field
])
def test_mint_rejects_bad_input_naming_the_field(client, services, location, body, field):
    resp = client.post(f"/v1/locations/{quote(location)}/pixel-prefixes", json=body,
                       headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"] and resp.json["statusCode"] == 422
    assert client.get(PREFIXES, headers=admin_headers()).json == {"prefixes": []}


@pytest.mark.parametrize(("method", "path", "field"), [
    ("post", "/v1/locations/bad%20id/pixel-prefixes", "locationId"),  # a valid body
    ("get", "/v1/locations/bad%20id/pixel-prefixes", "locationId"),
    ("delete", f"{PREFIXES}/bad%20id", "prefixId"),
    ("delete", "/v1/locations/bad%20id/pixel-prefixes/pp_1", "locationId"),
])
def test_bad_ids_in_the_path_are_400_naming_them(client, method, path, field):
    """As on the location's own routes (web/paths.py): one rule for every id in a path."""
    body = {"json": {"kind": "invoice"}} if method == "post" else {}
    resp = getattr(client, method)(path, headers=admin_headers(), **body)
    assert resp.status_code == 400 and field in resp.json["errors"]
    assert resp.json["statusCode"] == 400


def test_revoking_an_unknown_prefix_is_404(client):
    resp = client.delete(f"{PREFIXES}/pp_000000000000", headers=admin_headers())
    assert resp.status_code == 404 and resp.json["message"]


@pytest.mark.parametrize(("method", "path"), [
    ("post", PREFIXES), ("get", PREFIXES), ("delete", f"{PREFIXES}/pp_000000000000")])
def test_prefix_routes_need_the_admin_key(client, services, method, path):
    from .conftest import ingest_headers

    resp = getattr(client, method)(path, json={"kind": "invoice"})
    assert resp.status_code == 401 and resp.json["statusCode"] == 401
    # A valid key without the scope: 403 naming it.
    resp = getattr(client, method)(path, json={"kind": "invoice"}, headers=ingest_headers())
    assert resp.status_code == 403 and "admin" in resp.json["message"]
    assert client.get(PREFIXES, headers=admin_headers()).json == {"prefixes": []}


def test_purge_removes_the_prefixes(client, services, clock):
    from service.store.retention import purge_location

    minted = mint(client)
    assert purge_location(services.engine, LOC)["pixelPrefixes"] == 1
    clock.advance(RECHECK.total_seconds() + 0.5)
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert viewed(services) == []


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json
    ids = {(method, path): op.get("operationId") for path, item in spec["paths"].items()
           for method, op in item.items() if method != "parameters"}
    assert {
        ("post", "/v1/locations/{location_id}/pixel-prefixes"): "mintPixelPrefix",
        ("get", "/v1/locations/{location_id}/pixel-prefixes"): "listPixelPrefixes",
        ("delete", "/v1/locations/{location_id}/pixel-prefixes/{prefix_id}"):
            "revokePixelPrefix",
        ("get", "/v1/pixel/l/{prefix}/{document_id}.gif"): "getLocationPixel",
        ("head", "/v1/pixel/l/{prefix}/{document_id}.gif"): "headLocationPixel",
    }.items() <= ids.items()


def test_cli_creates_lists_and_revokes(runner, client, services):
    made = runner.invoke(args=["pixel-prefix", "create", LOC, "--kind", "estimate",
                               "--name", "ESP template"])
    assert made.exit_code == 0, made.output
    prefix_id, template, html = made.output.strip().splitlines()
    assert html.startswith("<img ") and "{{estimate.id}}" in html
    assert_gif(get(client, pixel(template, "EST-1")))
    assert viewed(services)[0][:3] == ("estimate", LOC, "EST-1")

    listed = runner.invoke(args=["pixel-prefix", "list", LOC])
    assert listed.exit_code == 0
    [line] = listed.output.strip().splitlines()
    assert line.startswith(f"{prefix_id}\testimate\t") and "active" in line
    assert prefix_of(template) not in listed.output

    assert runner.invoke(args=["pixel-prefix", "revoke", OTHER, prefix_id]).exit_code != 0
    revoked = runner.invoke(args=["pixel-prefix", "revoke", LOC, prefix_id])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in runner.invoke(args=["pixel-prefix", "list", LOC]).output
    assert_gif(get(client, pixel(template, "EST-2")))
    assert len(viewed(services)) == 1

    for args in (["create", "bad id"], ["create", LOC, "--kind", "order"],
                 ["create", LOC, "--name", ""], ["list", "bad id"]):
        assert runner.invoke(args=["pixel-prefix", *args]).exit_code != 0, args
    assert runner.invoke(args=["pixel-prefix", "list", OTHER]).output.startswith("no pixel")


def test_a_prefix_does_not_expire(client, services, clock):
    """A prefix has no expiry: it records until revoked, however old."""
    minted = mint(client)
    clock.advance(400 * 86400)
    assert_gif(get(client, pixel(minted["urlTemplate"], "INV-1")))
    assert viewed(services)[0][2] == "INV-1"
    assert minted["createdAt"].startswith(T0.strftime("%Y-%m-%dT%H:%M:%S"))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest=st.text(min_size=0, max_size=200), method=st.sampled_from(["GET", "HEAD"]))
def test_fuzz_any_path_under_a_location_pixel_is_the_gif(client, services, rest, method):
    resp = client.open("/v1/pixel/l/" + quote(rest, safe="/.~-_"), method=method)
    assert_gif(resp)  # empty segments, slashes, newlines, NULs: always the GIF
    assert viewed(services) == []  # and no prefix, so nothing recorded
