"""The console's locations: the list, a location's page, its actions, and the overview."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from service.forward.forwarder import Forwarder

from .conftest import T0, make_view
from .console import post_form, sign_in, text
from .fakes import FakeHighLevelClient, InlineExecutor

PIT = "pit-console-" + "t" * 24


@pytest.fixture
def console(client):
    sign_in(client)
    return client


@pytest.fixture
def fake():
    return FakeHighLevelClient()


@pytest.fixture
def forward(store, vault, fake, clock):
    """``forward()``: one forwarder pass now (claims, sends to ``fake``, records)."""
    forwarder = Forwarder(store, vault, fake, executor=InlineExecutor(), clock=clock,
                          rand=lambda: 1.0)
    return lambda: forwarder.forward_once(now=clock())


def views(store, location_id: str, *documents: str, now: dt.datetime = T0) -> None:
    store.record_views([make_view(now, location_id=location_id, document_id=d)
                        for d in documents], now=now)


@pytest.fixture
def waiting(store, forward):
    """``waiting(location, *documents)``: views the forwarder parked for want of a token."""
    def make(location_id: str, *documents: str) -> None:
        views(store, location_id, *documents)
        forward()
    return make


@pytest.fixture
def dead_letter(store, vault, fake, forward):
    """``dead_letter(location, document)``: a document HighLevel refused for good (404)."""
    def make(location_id: str, document_id: str) -> None:
        vault.set_token(location_id, access_token=PIT, now=T0)
        views(store, location_id, document_id)
        fake.script(404, document_id=document_id)
        forward()
    return make


def queue(store, location_id: str) -> dict[str, int]:
    """The location's documents by status, those it has."""
    return {k: n for k, n in store.location(location_id, now=T0)["queue"].items() if n}


def location_ids(page: str) -> list[str]:
    return re.findall(r'<th scope="row"><a href="/console/locations/([^"]+)">', page)


def test_a_location_without_a_token_is_listed_with_its_waiting_views(console, waiting):
    waiting("loc_waiting", "inv_1", "inv_2", "inv_3")
    resp = console.get("/console/locations?state=no_token")
    assert resp.status_code == 200
    assert location_ids(resp.text) == ["loc_waiting"]
    assert "no token: 3 views waiting" in text(resp.text)


def test_the_list_filters_by_state_and_searches_by_id(console, waiting, dead_letter):
    waiting("loc_waiting", "inv_1")
    dead_letter("loc_dead", "inv_9")
    assert location_ids(console.get("/console/locations?state=dead").text) == ["loc_dead"]
    assert location_ids(console.get("/console/locations?q=loc_dead").text) == ["loc_dead"]
    assert set(location_ids(console.get("/console/locations").text)) == {
        "loc_waiting", "loc_dead"}


@pytest.mark.parametrize("query", ["state=broken", "q=bad%20id", "limit=0", "limit=501",
                                   "surprise=1"])
def test_a_bad_list_query_is_a_422_page(console, query):
    resp = console.get(f"/console/locations?{query}")
    assert resp.status_code == 422
    assert 'class="error"' in resp.text
    assert location_ids(resp.text) == []


def test_a_location_page_shows_its_token_but_never_the_token(console, dead_letter):
    dead_letter("loc_dead", "inv_9")
    resp = console.get("/console/locations/loc_dead")
    assert resp.status_code == 200
    shown = text(resp.text)
    assert "Kind Private Integration Token" in shown and "Status active" in shown
    assert "permanent 404 HTTP 404" in shown  # the attempt, with HighLevel's message
    assert PIT not in resp.text
    assert "The HighLevel app is not configured" in shown


@pytest.mark.parametrize("location_id", ["nobody_here", "bad%20id", "x" * 65])
def test_an_unknown_location_is_a_404_page(console, location_id):
    resp = console.get(f"/console/locations/{location_id}")
    assert resp.status_code == 404
    assert resp.mimetype == "text/html"


def test_storing_a_token_releases_the_parked_views(console, store, vault, waiting):
    waiting("loc_waiting", "inv_1", "inv_2")
    resp = post_form(console, "/console/locations/loc_waiting",
                     "/console/locations/loc_waiting/token", accessToken=f"  {PIT}\n")
    assert resp.status_code == 302 and resp.location == "/console/locations/loc_waiting"
    assert vault.read("loc_waiting").access_token() == PIT  # pasted whitespace dropped
    assert queue(store, "loc_waiting") == {"pending": 2}
    page = console.get(resp.location)
    assert "Token stored. 2 parked document(s) will be sent again." in text(page.text)
    assert PIT not in page.text


@pytest.mark.parametrize(("fields", "field"), [
    ({"accessToken": "short"}, "accessToken"),
    ({"accessToken": "pit with spaces inside"}, "accessToken"),
    ({"accessToken": PIT, "companyId": "bad id"}, "companyId"),
    ({}, "accessToken"),
])
def test_a_bad_token_is_refused_next_to_its_field_and_nothing_is_stored(
        console, store, vault, waiting, fields, field):
    waiting("loc_waiting", "inv_1")
    resp = post_form(console, "/console/locations/loc_waiting",
                     "/console/locations/loc_waiting/token", **fields)
    assert resp.status_code == 422
    assert f'id="{field}-error"' in resp.text
    assert vault.describe("loc_waiting") is None
    assert fields.get("accessToken", "never-shown") not in resp.text
    assert queue(store, "loc_waiting") == {"blocked": 1}


def test_sending_parked_views_again_needs_an_active_token(console, store, vault, waiting):
    waiting("loc_waiting", "inv_1")
    page = "/console/locations/loc_waiting"
    resp = post_form(console, page, f"{page}/unblock")
    assert resp.status_code == 302
    assert "Nothing was released" in text(console.get(page).text)
    vault.set_token("loc_waiting", access_token=PIT, now=T0)  # stored elsewhere (the CLI)
    post_form(console, page, f"{page}/unblock")
    assert "1 parked document(s) will be sent again." in text(console.get(page).text)
    assert queue(store, "loc_waiting") == {"pending": 1}


def test_a_replay_shows_how_many_first_and_changes_nothing_until_confirmed(
        console, store, dead_letter):
    dead_letter("loc_dead", "inv_9")
    dead_letter("loc_other", "inv_8")
    preview = console.get("/console/locations/loc_dead/replay")
    assert preview.status_code == 200
    assert "A replay would re-queue 1 dead document(s)" in text(preview.text)
    assert queue(store, "loc_dead") == {"dead": 1}
    resp = post_form(console, "/console/locations/loc_dead/replay",
                     "/console/locations/loc_dead/replay")
    assert resp.status_code == 302
    assert "1 dead document(s) re-queued." in text(console.get(resp.location).text)
    assert queue(store, "loc_dead") == {"pending": 1}
    assert queue(store, "loc_other") == {"dead": 1}  # not this one's
    again = console.get("/console/locations/loc_dead/replay")
    assert "a replay would re-queue nothing" in text(again.text)
    assert "Replay 0" not in again.text


def test_purge_needs_the_id_typed_again(console, store, vault, dead_letter):
    dead_letter("loc_dead", "inv_9")
    page = "/console/locations/loc_dead"
    wrong = post_form(console, page, f"{page}/purge", confirm="loc_dea")
    assert wrong.status_code == 422
    assert "Nothing was deleted" in text(wrong.text)
    assert vault.describe("loc_dead") is not None
    resp = post_form(console, page, f"{page}/purge", confirm="loc_dead")
    assert resp.status_code == 302 and resp.location == "/console/locations"
    done = text(console.get(resp.location).text)
    for part in ("Purged loc_dead:", "1 events", "1 documents", "1 deliveries", "1 tokens"):
        assert part in done
    assert vault.describe("loc_dead") is None
    assert store.location("loc_dead", now=T0) is None
    assert console.get(page).status_code == 404


def test_the_overview_lists_what_needs_attention_first_and_draws_its_charts(
        console, waiting, dead_letter):
    waiting("loc_waiting", "inv_1", "inv_2")
    dead_letter("loc_dead", "inv_9")
    resp = console.get("/console/overview")
    assert resp.status_code == 200
    page = resp.text
    attention = page[page.index("Needs attention"):page.index("Queue and latency")]
    assert set(location_ids(attention)) == {"loc_waiting", "loc_dead"}
    assert page.count("<svg ") == 2 and page.count("<polyline ") == 8
    assert "Views per hour, last 24 hours" in page and "Views per day, last 30 days" in page


def test_the_overview_says_when_nothing_needs_attention(console):
    resp = console.get("/console/overview")
    assert resp.status_code == 200
    assert "Every location is fine" in resp.text
