"""Command line: thin wrappers, exercised through Flask's CLI runner."""

from __future__ import annotations

from cryptography.fernet import Fernet

from service import create_app
from service.config import load_config
from service.store.engine import current_revision, head_revision

from .conftest import ingest_headers, make_event, test_config


def test_db_upgrade_creates_the_schema(db_url):
    app = create_app(test_config(db_url))
    engine = app.extensions["service"].engine
    assert current_revision(engine) is None
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output
    assert current_revision(engine) == head_revision()
    # Running it again (every release) is harmless.
    assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
    engine.dispose()


def test_keys_generate_prints_fresh_usable_values(runner, tmp_path):
    result = runner.invoke(args=["keys", "generate"])
    lines = dict(line.split("=", 1) for line in result.output.splitlines())
    assert set(lines) == {"INGEST_API_KEYS", "ADMIN_API_KEYS", "PIXEL_SIGNING_KEYS",
                          "TOKEN_ENCRYPTION_KEYS", "SESSION_SECRET_KEYS",
                          "OPERATOR_WEBHOOK_SECRET"}
    Fernet(lines["TOKEN_ENCRYPTION_KEYS"])  # a valid Fernet key
    assert load_config({"OPERATOR_WEBHOOK_SECRET": lines["OPERATOR_WEBHOOK_SECRET"]},
                       instance_path=tmp_path)["OPERATOR_WEBHOOK_SECRET"].startswith("whsec_")
    again = dict(line.split("=", 1) for line in runner.invoke(args=["keys", "generate"])
                 .output.splitlines())
    assert again["INGEST_API_KEYS"] != lines["INGEST_API_KEYS"]


def test_keys_show_is_for_development_only(app, runner):
    assert app.config["INGEST_API_KEYS"][0] in runner.invoke(args=["keys", "show"]).output
    app.extensions["service"].config["RELAY_ENV"] = "production"
    result = runner.invoke(args=["keys", "show"])
    assert result.exit_code != 0
    assert app.config["INGEST_API_KEYS"][0] not in result.output


def test_forwarder_once_delivers_through_real_http(db_url, fake_highlevel):
    app = create_app(test_config(db_url, HIGHLEVEL_BASE_URL=fake_highlevel.url))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    runner.invoke(args=["tokens", "set", "loc_1", "--access-token", "pit-cli-token-1"])
    client = app.test_client()
    for invoice in ("inv_1", "inv_1", "inv_2"):
        client.post("/v1/events", json=make_event(invoiceId=invoice), headers=ingest_headers())
    result = runner.invoke(args=["forwarder", "--once"])
    assert result.exit_code == 0, result.output
    assert "forwarder handled 2 document(s)" in result.output
    sent = sorted(r.document_id for r in fake_highlevel.patches())
    assert sent == ["inv_1", "inv_2"]
    assert {r.token for r in fake_highlevel.patches()} == {"pit-cli-token-1"}
    app.extensions["service"].engine.dispose()
