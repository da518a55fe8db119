"""Location tokens: admin API, CLI, encryption at rest, key rotation; never a secret out."""

from __future__ import annotations

import datetime as dt
import logging
import traceback

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service.forward.credentials import TokenProvider
from service.store.db import locations
from service.store.tokens import TokenDecryptError, TokenVault

from .conftest import FERNET_KEY, T0, admin_headers, ingest_headers, make_event, test_config

SECRET = "pit-8c1f7d0e-secret-value"
REFRESH = "refresh-0a9b8c7d-secret"


def put_token(client, location="loc_1", **body):
    body = {"accessToken": SECRET, **body}
    return client.put(f"/v1/locations/{location}/token", json=body, headers=admin_headers())


def app_with(db_url, clock, **settings):
    """Another app on the test's store, with ``settings`` (e.g. an OAuth app) on top."""
    from service import create_app

    app = create_app(test_config(db_url, **settings))
    app.extensions["service"].clock = clock
    return app


@pytest.fixture
def oauth_client(migrated_db_url, clock):
    """A client of a relay with an OAuth app configured: it can refresh OAuth tokens."""
    app = app_with(migrated_db_url, clock, HIGHLEVEL_CLIENT_ID="client-id-1",
                   HIGHLEVEL_CLIENT_SECRET="client-secret-1")
    yield app.test_client()
    app.extensions["service"].engine.dispose()


def test_put_token_stores_it_and_answers_without_the_secret(client, vault):
    resp = put_token(client, companyId="comp_1")
    assert resp.status_code == 200
    assert resp.json["locationId"] == "loc_1"
    assert (resp.json["tokenKind"], resp.json["status"]) == ("pit", "active")
    assert resp.json["companyId"] == "comp_1"
    assert SECRET not in resp.get_data(as_text=True)
    assert vault.read("loc_1").access_token() == SECRET


def test_oauth_token_with_expiry(oauth_client, clock):
    resp = put_token(oauth_client, refreshToken=REFRESH, expiresIn=86399)
    assert resp.json["tokenKind"] == "oauth" and resp.json["hasRefreshToken"] is True
    expected = clock() + dt.timedelta(seconds=86399)
    assert dt.datetime.fromisoformat(resp.json["expiresAt"]) == expected
    assert REFRESH not in resp.get_data(as_text=True)


@pytest.mark.parametrize(("settings", "named"), [
    ({}, "HIGHLEVEL_CLIENT_ID and HIGHLEVEL_CLIENT_SECRET are not set"),
    ({"HIGHLEVEL_CLIENT_SECRET": "client-secret-1"}, "HIGHLEVEL_CLIENT_ID is not set"),
    ({"HIGHLEVEL_CLIENT_ID": "client-id-1"}, "HIGHLEVEL_CLIENT_SECRET is not set"),
])
def test_a_refresh_token_without_the_oauth_app_is_422_naming_the_setting(
        migrated_db_url, clock, vault, settings, named):
    """Nothing could ever refresh it: refused, and the stored token is left as it was."""
    app = app_with(migrated_db_url, clock, **settings)
    try:
        client = app.test_client()
        assert put_token(client).status_code == 200  # a Private Integration Token is fine
        before = vault.describe("loc_1")
        resp = put_token(client, accessToken=SECRET + "-oauth", refreshToken=REFRESH,
                         expiresIn=86399)
        assert resp.status_code == 422, resp.json
        assert resp.json["statusCode"] == 422
        [message] = resp.json["errors"]["refreshToken"]
        assert message.startswith(named + ": this relay cannot refresh OAuth tokens")
        assert "without refreshToken" in message and resp.json["message"] == message
        shown = resp.get_data(as_text=True)
        assert SECRET not in shown and REFRESH not in shown
        assert vault.describe("loc_1") == before and vault.read("loc_1").access_token() == SECRET
        resp = put_token(client, "loc_2", refreshToken=REFRESH)
        assert resp.status_code == 422 and vault.describe("loc_2") is None
    finally:
        app.extensions["service"].engine.dispose()


def test_cli_refuses_a_refresh_token_without_the_oauth_app(runner, vault):
    result = runner.invoke(args=["tokens", "set", "loc_9", "--access-token", SECRET,
                                 "--refresh-token", REFRESH])
    assert result.exit_code != 0
    assert "HIGHLEVEL_CLIENT_ID and HIGHLEVEL_CLIENT_SECRET are not set" in result.output
    assert "--refresh-token" in result.output
    assert SECRET not in result.output and REFRESH not in result.output
    assert vault.describe("loc_9") is None


def test_cli_stores_a_refresh_token_with_the_oauth_app(migrated_db_url, clock, vault):
    app = app_with(migrated_db_url, clock, HIGHLEVEL_CLIENT_ID="client-id-1",
                   HIGHLEVEL_CLIENT_SECRET="client-secret-1")
    try:
        result = app.test_cli_runner().invoke(args=[
            "tokens", "set", "loc_9", "--access-token", SECRET, "--refresh-token", REFRESH,
            "--expires-in", "86399"])
        assert result.exit_code == 0, result.output
        assert vault.read("loc_9").refresh_token() == REFRESH
    finally:
        app.extensions["service"].engine.dispose()


@pytest.mark.parametrize(("body", "field"), [
    ({"accessToken": ""}, "accessToken"),
    ({"accessToken": "short"}, "accessToken"),
    ({"refreshToken": REFRESH}, "accessToken"),
    ({"accessToken": SECRET, "expiresIn": -1}, "expiresIn"),
    ({"accessToken": SECRET, "expiresIn": 10, "expiresAt": "2027-01-01T00:00:00Z"}, "expiresAt"),
    ({"accessToken": SECRET, "companyId": "bad id"}, "companyId"),
    ({"accessToken": SECRET, "other": 1}, "other"),
])
def test_bad_token_bodies_are_422_and_echo_no_secret(client, vault, body, field):
    resp = client.put("/v1/locations/loc_1/token", json=body, headers=admin_headers())
    assert resp.status_code == 422
    assert field in resp.json["errors"]
    assert SECRET not in resp.get_data(as_text=True)
    assert vault.describe("loc_1") is None


def test_bad_location_id_is_rejected(client):
    resp = put_token(client, location="a" * 65)
    assert resp.status_code == 400
    assert "locationId" in resp.json["errors"]


def test_token_routes_need_the_admin_key(client):
    resp = client.put("/v1/locations/loc_1/token", json={"accessToken": SECRET},
                      headers=ingest_headers())
    # A valid key without the scope: 403 naming it; no key at all: 401. Nothing stored.
    assert (resp.status_code, resp.json["message"]) == (403, "This key lacks the scope admin")
    assert client.delete("/v1/locations/loc_1/token").status_code == 401
    assert client.get("/v1/locations/loc_1", headers=admin_headers()).status_code == 404


def test_list_and_get_locations(client):
    put_token(client, "loc_b")
    put_token(client, "loc_a")
    listed = client.get("/v1/locations", headers=admin_headers())
    assert [loc["locationId"] for loc in listed.json["locations"]] == ["loc_a", "loc_b"]
    assert SECRET not in listed.get_data(as_text=True)
    client.post("/v1/events", json=make_event(locationId="loc_a"), headers=ingest_headers())
    one = client.get("/v1/locations/loc_a", headers=admin_headers()).json
    assert one["queue"] == {"pending": 1, "blocked": 0, "dead": 0, "idle": 0}
    assert one["verdicts"] == {"human": 1}
    assert client.get("/v1/locations/nope", headers=admin_headers()).status_code == 404


def test_delete_token_parks_views_and_put_releases_them(client, services):
    put_token(client)
    client.post("/v1/events", json=make_event(), headers=ingest_headers())
    assert client.delete("/v1/locations/loc_1/token", headers=admin_headers()).status_code == 204
    assert services.store.queue_depth() == {"blocked": 1}
    assert services.vault.read("loc_1") is None
    assert client.delete("/v1/locations/loc_1/token",
                         headers=admin_headers()).status_code == 404
    put_token(client)
    assert services.store.queue_depth() == {"pending": 1}


def test_tokens_are_encrypted_at_rest(vault, services):
    vault.set_token("loc_1", access_token=SECRET, refresh_token=REFRESH, now=T0)
    with services.engine.connect() as conn:
        row = conn.execute(sa.select(locations)).one()
    assert SECRET not in row.access_token and REFRESH not in row.refresh_token
    assert Fernet(services.config["TOKEN_ENCRYPTION_KEYS"][0]).decrypt(
        row.access_token.encode()).decode() == SECRET


def test_key_rotation_old_ciphertexts_decrypt_and_reencrypt_moves_them(services):
    old_key = services.config["TOKEN_ENCRYPTION_KEYS"][0]
    TokenVault(services.engine, [old_key]).set_token("loc_1", access_token=SECRET, now=T0)
    new_key = Fernet.generate_key().decode()
    rotated = TokenVault(services.engine, [new_key, old_key])
    assert rotated.read("loc_1").access_token() == SECRET  # still readable
    assert rotated.reencrypt() == 1
    only_new = TokenVault(services.engine, [new_key])
    assert only_new.read("loc_1").access_token() == SECRET
    with pytest.raises(TokenDecryptError) as err:
        TokenVault(services.engine, [old_key]).read("loc_1").access_token()
    assert SECRET not in str(err.value)


def test_reencrypt_never_overwrites_a_refresh_committed_meanwhile(services):
    """A refresh (another process) commits between reencrypt's read and its write: the
    refreshed tokens survive, and end up under the new key too."""
    import threading

    from service.highlevel.oauth import TokenGrant

    old_key = services.config["TOKEN_ENCRYPTION_KEYS"][0]
    TokenVault(services.engine, [old_key]).set_token(
        "loc_1", access_token="access-0", refresh_token="refresh-0", now=T0,
        expires_at=T0 + dt.timedelta(hours=1))
    new_key = Fernet.generate_key().decode()
    rotating = TokenVault(services.engine, [new_key, old_key])
    other_process = TokenVault(services.engine, [new_key, old_key])
    spent = []

    class OAuth:  # HighLevel's token endpoint, as the refresh sees it
        def refresh(self, refresh_token, user_type):
            spent.append(refresh_token)
            return TokenGrant(access_token="access-1", refresh_token="refresh-1",
                              expires_in=86399)

    def refresh_meanwhile():
        tokens = TokenProvider(other_process, OAuth())
        stale = tokens.get("loc_1", now=T0)
        assert stale.generation == 1
        assert tokens.renew(stale, now=T0).generation == 2

    real_rotate = rotating.fernet.rotate
    racers = []

    def rotate(ciphertext):  # runs between reencrypt's read of the row and its write
        if not racers:
            # Its own thread, as in another process: a reencrypt holding the row's write
            # lock here would block it (safe too: it then refreshes after the rewrite).
            racers.append(threading.Thread(target=refresh_meanwhile))
            racers[0].start()
            racers[0].join(timeout=5)
        return real_rotate(ciphertext)

    rotating.fernet.rotate = rotate
    assert rotating.reencrypt() == 1
    racers[0].join(timeout=10)
    assert not racers[0].is_alive()
    assert spent == ["refresh-0"]  # refreshed exactly once, with the old refresh token

    only_new = Fernet(new_key)
    with services.engine.connect() as conn:
        row = conn.execute(sa.select(locations)).one()
    assert only_new.decrypt(row.access_token.encode()).decode() == "access-1"
    assert only_new.decrypt(row.refresh_token.encode()).decode() == "refresh-1"
    assert row.generation == 2


def test_credentials_repr_hides_the_token(vault):
    vault.set_token("loc_1", access_token=SECRET, refresh_token=REFRESH, now=T0)
    stored, creds = vault.read("loc_1"), TokenProvider(vault).get("loc_1", now=T0)
    assert creds.access_token == SECRET
    for shown in (repr(stored), repr(creds)):
        assert SECRET not in shown and REFRESH not in shown


def test_a_batch_reads_its_locations_tokens_at_once_with_the_same_answers(vault):
    vault.set_token("loc_1", access_token=SECRET, now=T0)
    vault.set_token("loc_2", access_token=SECRET + "2", now=T0)
    with vault.hold("loc_2") as row:
        row.mark(status="invalid", message="revoked", now=T0)
    tokens = TokenProvider(vault)

    many = tokens.get_many(["loc_1", "loc_2", "loc_none"], now=T0)

    assert many == {loc: tokens.get(loc, now=T0) for loc in ("loc_1", "loc_2", "loc_none")}
    assert many["loc_1"].access_token == SECRET
    assert [many[loc].reason for loc in ("loc_2", "loc_none")] == ["no_token"] * 2


def test_replacing_a_token_bumps_its_generation_and_resets_state(vault):
    tokens = TokenProvider(vault)
    vault.set_token("loc_1", access_token=SECRET, now=T0)
    first = tokens.get("loc_1", now=T0)
    assert tokens.record_rejection(first, status=401, message="x", now=T0) == "retry"
    vault.set_token("loc_1", access_token=SECRET + "2", now=T0)
    second = tokens.get("loc_1", now=T0)
    assert second.generation == first.generation + 1
    assert second.unauthorized_count == 0
    # A late 401 for the old token does not count against the new one.
    assert tokens.record_rejection(first, status=401, message="x", now=T0) == "retry"
    assert tokens.record_rejection(first, status=401, message="x", now=T0) == "retry"
    assert vault.describe("loc_1")["status"] == "active"


def test_cli_tokens_set_list_delete(runner, vault):
    result = runner.invoke(args=["tokens", "set", "loc_9"], input=SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert vault.read("loc_9").access_token() == SECRET
    listed = runner.invoke(args=["tokens", "list"])
    assert "loc_9\tpit\tactive" in listed.output and SECRET not in listed.output
    result = runner.invoke(args=["tokens", "set", "loc_9", "--access-token", "x"])
    assert result.exit_code != 0 and "accessToken" in result.output
    assert runner.invoke(args=["tokens", "delete", "loc_9"]).exit_code == 0
    assert vault.describe("loc_9") is None
    assert runner.invoke(args=["tokens", "delete", "loc_9"]).exit_code != 0


def test_cli_reencrypt(runner, vault):
    vault.set_token("loc_1", access_token=SECRET, now=T0)
    result = runner.invoke(args=["tokens", "reencrypt"])
    assert result.exit_code == 0 and "re-encrypted 1" in result.output


def test_no_secret_in_logs(oauth_client, caplog):
    caplog.set_level(logging.DEBUG)
    assert put_token(oauth_client, refreshToken=REFRESH).status_code == 200
    oauth_client.get("/v1/locations", headers=admin_headers())
    assert SECRET not in caplog.text and REFRESH not in caplog.text


def test_a_failing_write_shows_no_ciphertext_in_its_error_or_the_log(services, caplog):
    """SQLAlchemy quotes a failed statement's parameters in the error, and PostgreSQL the
    failing row ("Failing row contains (...)"): a token's ciphertext must reach neither."""
    ciphertext = Fernet(FERNET_KEY).encrypt(SECRET.encode()).decode()
    with pytest.raises(sa.exc.IntegrityError) as failed:
        with services.engine.begin() as conn:  # status is NOT NULL
            conn.execute(locations.insert().values(
                location_id="loc_1", token_kind="pit", access_token=ciphertext, status=None,
                created_at=T0, updated_at=T0))
    logging.getLogger("service.store.tokens").error("store.failed", exc_info=failed.value)
    shown = "".join(traceback.format_exception(failed.value)) + caplog.text
    assert "status" in shown  # the error still says what went wrong
    # Long parameters are shown cut in the middle: look for either end, and the prefix of
    # every Fernet token.
    for piece in (ciphertext[:16], ciphertext[-16:], "gAAAAA"):
        assert piece not in shown, shown
