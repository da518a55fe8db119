"""The locations directory and a location's page (issue #15): ``GET /v1/locations`` with
states, search and cursor paging, ``GET /v1/locations/<id>`` for locations with views but
no token, strict query strings, the admin key on an event's status, and replay's dry run.
On SQLite, and on PostgreSQL when TEST_DATABASE_URL is set (the ``backend`` fixture)."""

from __future__ import annotations

import datetime as dt

import pytest

from service.forward.credentials import TokenProvider
from service.forward.forwarder import Forwarder
from service.highlevel.client import Response
from service.highlevel.oauth import LOCATION_INACTIVE, OAuthError
from service.store import seen
from service.store.directory import LOCATION_STATES
from service.store.tokens import INVALID

from .conftest import admin_headers, ingest_headers, make_event, make_view, test_config
from .fakes import FakeHighLevelClient, InlineExecutor

SECRET = "pit-directory-secret-0123456789"
# Each location of the ``states`` fixture, by the state it ends in.
EXPECTED = {"loc_ok": "ok", "loc_none": "no_token", "loc_bad": "invalid",
            "loc_idle": "inactive", "loc_dead": "dead", "loc_slow": "paused"}


@pytest.fixture
def fake():
    return FakeHighLevelClient()


@pytest.fixture
def forward(store, vault, fake, clock):
    """``forward()``: one forwarder pass (claims, sends to ``fake``, records) now."""
    forwarder = Forwarder(store, vault, fake, executor=InlineExecutor(), clock=clock,
                          rand=lambda: 1.0)
    return lambda: forwarder.forward_once(now=clock())


def views(store, clock, location_id: str, document_id: str = "inv_1", count: int = 1,
          **fields) -> None:
    store.record_views([make_view(clock(), location_id=location_id, document_id=document_id,
                                  **fields)] * count, now=clock())


@pytest.fixture
def states(store, vault, fake, forward, clock):
    """One location in each state (``EXPECTED``), each with views the forwarder has tried."""
    for loc in ("loc_ok", "loc_bad", "loc_dead", "loc_slow"):
        vault.set_token(loc, access_token=SECRET, now=clock())
    vault.set_token("loc_idle", access_token=SECRET, refresh_token="refresh-0123456789",
                    expires_at=clock() + dt.timedelta(minutes=1), now=clock())
    views(store, clock, "loc_ok")
    views(store, clock, "loc_none", count=2)
    views(store, clock, "loc_none", document_id="inv_2")
    views(store, clock, "loc_bad")
    views(store, clock, "loc_bad", document_id="inv_404")
    views(store, clock, "loc_dead", document_id="inv_404")
    views(store, clock, "loc_dead", document_id="inv_2")
    views(store, clock, "loc_slow", document_id="inv_slow")
    fake.script(404, 404, document_id="inv_404")
    fake.script(Response(429, message="Too Many Requests"), document_id="inv_slow")
    # OAuth answers the refresh ahead of expiry "not active": the token is kept, parked.
    TokenProvider(vault, InactiveOAuth()).get("loc_idle", now=clock())
    forward()
    with vault.hold("loc_bad") as row:  # what the token policy does on a second 401
        row.mark(status=INVALID, message="The token is not authorized for this scope.",
                 now=clock())
    return EXPECTED


class InactiveOAuth:
    """HighLevel's OAuth answering every refresh "Location is not active"."""

    def refresh(self, refresh_token, *, user_type):
        raise OAuthError(LOCATION_INACTIVE, "Location is not active")


def get(client, path: str, **query):
    resp = client.get(path, query_string=query, headers=admin_headers())
    assert resp.status_code == 200, resp.json
    return resp.json


def walk(client, **query) -> list[dict]:
    """Every row of the directory, page by page (bounded)."""
    rows, cursor = [], None
    for _ in range(100):
        page = get(client, "/v1/locations", **query, **({"cursor": cursor} if cursor else {}))
        rows += page["locations"]
        cursor = page["next"]
        if cursor is None:
            return rows
    raise AssertionError("more than 100 pages")


def test_a_location_with_views_and_no_token_is_listed_with_what_waits(client, states):
    page = get(client, "/v1/locations")
    row = {r["locationId"]: r for r in page["locations"]}["loc_none"]
    assert (row["state"], row["tokenKind"], row["tokenStatus"], row["waitingViews"]) == (
        "no_token", None, None, 3)
    assert row["queue"] == {"pending": 0, "blocked": 2, "dead": 0, "idle": 0}
    detail = get(client, "/v1/locations/loc_none")
    assert (detail["state"], detail["waitingViews"], detail["verdicts"]) == (
        "no_token", 3, {"human": 3})
    assert [a["outcome"] for a in detail["recentAttempts"]] == ["no_token", "no_token"]


def test_every_location_shows_its_state(client, states):
    rows = get(client, "/v1/locations")["locations"]
    assert {r["locationId"]: r["state"] for r in rows} == states
    assert [r["locationId"] for r in rows] == sorted(states)


@pytest.mark.parametrize("state", LOCATION_STATES)
def test_the_state_filter_lists_exactly_the_locations_in_that_state(client, states, state):
    rows = get(client, "/v1/locations", state=state)["locations"]
    assert [r["locationId"] for r in rows] == [loc for loc, s in states.items() if s == state]
    assert {r["state"] for r in rows} == {state}


def test_a_state_is_the_worst_that_applies(client, states):
    bad = get(client, "/v1/locations/loc_bad")  # invalid token and a dead document
    assert (bad["state"], bad["queue"]["dead"], bad["tokenStatus"]) == ("invalid", 1, "invalid")
    assert bad["lastError"] == "The token is not authorized for this scope."


def test_a_row_counts_its_views_and_deliveries(client, states, clock):
    rows = {r["locationId"]: r for r in get(client, "/v1/locations")["locations"]}
    ok, dead, slow = rows["loc_ok"], rows["loc_dead"], rows["loc_slow"]
    assert (ok["delivered"], ok["waitingViews"], ok["deadViews"]) == (1, 0, 0)
    assert ok["lastDeliveryAt"] == clock().isoformat()
    assert ok["queue"] == {"pending": 0, "blocked": 0, "dead": 0, "idle": 1}
    assert (dead["deadViews"], dead["delivered"]) == (1, 1)
    assert slow["rateLimit"]["reason"] == "429"
    assert slow["rateLimit"]["pausedUntil"] > clock().isoformat()
    assert (slow["waitingViews"], slow["lastDeliveryAt"]) == (1, None)
    assert ok["rateLimit"] is None


def test_a_location_page_has_verdicts_limits_and_highlevels_answers(client, states, store,
                                                                    clock):
    views(store, clock, "loc_dead", document_id="inv_3", verdict="bot", forward=False)
    page = get(client, "/v1/locations/loc_dead")
    assert page["verdicts"] == {"human": 2, "bot": 1}
    assert page["limits"]["burstMax"] == 100
    failed = [a for a in page["recentAttempts"] if a["outcome"] == "permanent"]
    assert [(a["documentId"], a["httpStatus"]) for a in failed] == [("inv_404", 404)]
    assert page["installUrl"] is None  # OAuth is not configured in tests
    assert SECRET not in client.get("/v1/locations/loc_dead", headers=admin_headers()).text
    assert SECRET not in client.get("/v1/locations", headers=admin_headers()).text


def test_the_page_offers_the_install_link_when_oauth_is_configured(migrated_db_url, clock):
    from service import create_app

    app = create_app(test_config(migrated_db_url, HIGHLEVEL_CLIENT_ID="client-1",
                                 HIGHLEVEL_CLIENT_SECRET="secret-1",
                                 PUBLIC_BASE_URL="https://relay.example.test/"))
    app.extensions["service"].clock = clock
    try:
        app.extensions["service"].vault.set_token("loc_1", access_token=SECRET, now=clock())
        page = get(app.test_client(), "/v1/locations/loc_1")
        assert page["installUrl"] == "https://relay.example.test/oauth/install"
    finally:
        app.extensions["service"].engine.dispose()


def test_nothing_stored_is_404(client, states):
    resp = client.get("/v1/locations/loc_never", headers=admin_headers())
    assert resp.status_code == 404
    assert resp.json["message"] == "Nothing is stored for that location"


def test_search_is_a_case_insensitive_part_of_the_id(client, states):
    assert [r["locationId"] for r in get(client, "/v1/locations", q="DEA")["locations"]] == [
        "loc_dead"]
    found = get(client, "/v1/locations", q="o", state="no_token")["locations"]
    assert [r["locationId"] for r in found] == ["loc_none"]
    assert get(client, "/v1/locations", q="zzz")["locations"] == []
    # LIKE's wildcards are characters like any other ("l_c" would match every "loc").
    assert get(client, "/v1/locations", q="l_c")["locations"] == []


def test_cursor_pages_cover_every_location_once(client, store, vault, forward, clock):
    with_token = [f"loc_{i:02d}" for i in range(0, 30, 2)]
    without = [f"loc_{i:02d}" for i in range(1, 30, 2)]
    for loc in with_token:
        vault.set_token(loc, access_token=SECRET, now=clock())
    for loc in with_token[:5] + without:
        views(store, clock, loc)
    for _ in range(5):
        forward()
    everything = [r["locationId"] for r in walk(client, limit=4)]
    assert everything == sorted(with_token + without)
    assert [r["locationId"] for r in walk(client, limit=3, state="no_token")] == without
    assert [r["locationId"] for r in walk(client, limit=7, state="ok")] == with_token
    assert [r["locationId"] for r in walk(client, limit=2, q="loc_1")] == [
        f"loc_{i}" for i in range(10, 20)]


def test_one_location_never_counts_anothers(client, store, vault, forward, clock, fake):
    vault.set_token("loc_a", access_token=SECRET, now=clock())
    views(store, clock, "loc_a", count=2)
    views(store, clock, "loc_ab", count=3)  # the same invoice id, another location
    fake.script(404, document_id="inv_1")
    forward()
    a, ab = get(client, "/v1/locations/loc_a"), get(client, "/v1/locations/loc_ab")
    assert (a["state"], a["deadViews"], a["verdicts"]) == ("dead", 2, {"human": 2})
    assert (ab["state"], ab["waitingViews"], ab["verdicts"]) == ("no_token", 3, {"human": 3})
    assert {x["outcome"] for x in a["recentAttempts"]} == {"permanent"}
    assert {x["outcome"] for x in ab["recentAttempts"]} == {"no_token"}
    assert client.get("/v1/locations", headers=ingest_headers()).status_code == 403


def test_views_counted_by_the_forwarder_read_the_same(client, store, vault, clock, forward):
    """The counts the forwarder keeps and the newer events add up to the same answer
    before, while and after it counts; a location whose views are all filtered machine
    opens (no document to try) is listed once they are counted."""
    views(store, clock, "loc_bots", verdict="scanner", forward=False, count=2)
    views(store, clock, "loc_mix", count=2)
    views(store, clock, "loc_mix", document_id="inv_2", verdict="bot", forward=False)
    before = get(client, "/v1/locations/loc_mix")["verdicts"]
    assert before == {"human": 2, "bot": 1}
    assert "loc_bots" not in [r["locationId"] for r in walk(client)]
    clock.advance(3600)
    views(store, clock, "loc_mix")  # newer than the counts: read from the events
    forward()
    forward()  # counting twice counts nothing twice
    assert get(client, "/v1/locations/loc_mix")["verdicts"] == {"human": 3, "bot": 1}
    bots = {r["locationId"]: r for r in walk(client)}["loc_bots"]
    assert (bots["state"], bots["waitingViews"]) == ("no_token", 0)
    assert get(client, "/v1/locations/loc_bots")["verdicts"] == {"scanner": 2}


def test_a_backlog_is_counted_a_few_batches_a_pass_and_reads_stay_exact(client, store,
                                                                          services, clock):
    for n in range(5):
        views(store, clock, "loc_1", document_id=f"inv_{n}")
    later = clock() + dt.timedelta(hours=1)
    counted = [seen.count_new(services.engine, now=later, lag=dt.timedelta(minutes=5),
                              batch=2, batches=1) for _ in range(4)]
    assert counted == [2, 2, 1, 0]
    assert get(client, "/v1/locations/loc_1")["verdicts"] == {"human": 5}


@pytest.mark.parametrize(("path", "query", "names"), [
    ("/v1/locations", "status=invalid", ["status"]),
    ("/v1/locations", "state=bogus", ["state"]),
    ("/v1/locations", "state=ok&surprise=1&limit=0", ["limit", "surprise"]),
    ("/v1/locations", "cursor=bad%20id", ["cursor"]),
    ("/v1/locations", "q=a%25b", ["q"]),
    ("/v1/deliveries", "outcome=bogus", ["outcome"]),
    ("/v1/deliveries", "state=dead", ["state"]),
])
def test_unknown_parameters_and_bad_values_are_422_naming_them(client, path, query, names):
    resp = client.get(f"{path}?{query}", headers=admin_headers())
    assert resp.status_code == 422, resp.json
    assert sorted(resp.json["errors"]) == names
    assert resp.json["message"] == f"The query string is not valid: {', '.join(names)}"


def test_an_events_status_is_readable_with_the_admin_key(client):
    accepted = client.post("/v1/events", json=make_event(), headers=ingest_headers()).json
    for headers in (ingest_headers(), admin_headers()):
        resp = client.get(f"/v1/events/{accepted['id']}", headers=headers)
        assert (resp.status_code, resp.json["status"]) == (200, "queued")
    wrong = client.get(f"/v1/events/{accepted['id']}",
                       headers={"Authorization": "Bearer ak_wrong"})
    assert wrong.status_code == 401


def test_replay_dry_run_changes_nothing_and_counts_what_replay_requeues(
        client, store, vault, fake, forward, clock, runner):
    vault.set_token("loc_1", access_token=SECRET, now=clock())
    for doc in ("inv_1", "inv_2", "inv_3"):
        views(store, clock, "loc_1", document_id=doc)
    fake.script(404, 404, 200)
    forward()
    assert store.queue_depth() == {"dead": 2, "idle": 1}
    body = {"locationId": "loc_1", "dryRun": True}
    dry = client.post("/v1/deliveries/replay", json=body, headers=admin_headers())
    assert (dry.status_code, dry.json) == (200, {"replayed": 2})
    assert store.queue_depth() == {"dead": 2, "idle": 1}
    assert "would replay 2 document(s)" in runner.invoke(
        args=["replay", "--all", "--dry-run"]).output
    assert store.queue_depth() == {"dead": 2, "idle": 1}
    real = client.post("/v1/deliveries/replay", json={"locationId": "loc_1"},
                       headers=admin_headers())
    assert real.json == {"replayed": 2}
    assert store.queue_depth() == {"pending": 2, "idle": 1}
    again = client.post("/v1/deliveries/replay", json=body, headers=admin_headers())
    assert again.json == {"replayed": 0}


def test_dry_run_alone_is_not_a_filter(client):
    resp = client.post("/v1/deliveries/replay", json={"dryRun": True}, headers=admin_headers())
    assert resp.status_code == 422 and "_schema" in resp.json["errors"]


def test_the_store_pages_with_a_cursor(store, vault, clock):
    for loc in ("b", "a", "c"):
        vault.set_token(loc, access_token=SECRET, now=clock())
    rows, cursor = store.list_locations(limit=2, now=clock())
    assert ([r["locationId"] for r in rows], cursor) == (["a", "b"], "b")
    rows, cursor = store.list_locations(cursor=cursor, limit=2, now=clock())
    assert ([r["locationId"] for r in rows], cursor) == (["c"], None)
    assert store.location("zz", now=clock()) is None


def test_the_attention_lists_are_each_states_first_page_read_at_once(store, vault, states,
                                                                    clock):
    """``Store.attention`` (the overview's lists) gives each state's first rows, as
    ``list_locations`` pages them, and whether more follow."""
    vault.set_token("loc_ok2", access_token=SECRET, now=clock())  # a second one: more
    lists = store.attention(LOCATION_STATES, limit=1, now=clock())
    assert lists["ok"][1] and not lists["dead"][1]
    assert list(lists) == list(LOCATION_STATES)
    for state, (rows, more) in lists.items():
        page, cursor = store.list_locations(state=state, limit=1, now=clock())
        assert (rows, more) == (page, cursor is not None)
    everyone = store.attention(LOCATION_STATES, limit=10, now=clock())
    assert {r["locationId"]: s for s, (rows, _) in everyone.items() for r in rows} == {
        **states, "loc_ok2": "ok"}
    assert not any(more for _, more in everyone.values())
