"""Configuration: one inventory, typed, with production refusing to start without secrets."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.fernet import Fernet

from service.config import ConfigError, generate_secrets, load_config, normalize_database_url

INGEST_ONE, INGEST_TWO = "ik_one_" + "1" * 25, "ik_two_" + "2" * 25  # 32 characters each
ADMIN_ONE = "ak_one_" + "a" * 25
SECRETS = {
    "INGEST_API_KEYS": f"{INGEST_ONE}, {INGEST_TWO}",
    "ADMIN_API_KEYS": ADMIN_ONE,
    "PIXEL_SIGNING_KEYS": "p1,p2",
    "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
}
# What production needs besides the secrets.
PRODUCTION = {**SECRETS, "RELAY_ENV": "production", "PUBLIC_BASE_URL": "https://relay.example"}


def test_defaults_match_the_design(tmp_path):
    cfg = load_config({}, instance_path=tmp_path)
    assert cfg["DATABASE_URL"] == "sqlite:///instance/relay.db"
    assert cfg["HIGHLEVEL_BASE_URL"] == "https://services.leadconnectorhq.com"
    assert cfg["HIGHLEVEL_API_VERSION"] == "2021-07-28"
    assert (cfg["COALESCE_WINDOW_SECONDS"], cfg["MAX_EVENT_AGE_SECONDS"]) == (60, 86400)
    assert cfg["FORWARD_CONCURRENCY"] == 16
    assert cfg["MACHINE_OPENS"] == "skip"
    assert cfg["RATE_LIMIT_BURST"] == (100, 10.0)
    assert cfg["RATE_LIMIT_DAILY"] == 200000
    assert cfg["DELIVERY_LOG_DAYS"] == 30
    assert cfg["PUBLIC_BASE_URL"] == "http://localhost:8000"
    assert (cfg["PORT"], cfg["TRUSTED_PROXIES"], cfg["LOG_LEVEL"]) == (8000, 0, "INFO")
    assert cfg["RELAY_ENV"] == "development" and cfg["LOG_FORMAT"] == "text"


def test_values_are_typed(tmp_path):
    cfg = load_config({**SECRETS, "COALESCE_WINDOW_SECONDS": "5", "RATE_LIMIT_BURST": "25/10s",
                       "MACHINE_OPENS": "Forward", "LOG_LEVEL": "debug"},
                      instance_path=tmp_path)
    assert cfg["INGEST_API_KEYS"] == [INGEST_ONE, INGEST_TWO]
    assert cfg["COALESCE_WINDOW_SECONDS"] == 5
    assert cfg["RATE_LIMIT_BURST"] == (25, 10.0)
    assert cfg["MACHINE_OPENS"] == "forward"
    assert cfg["LOG_LEVEL"] == "DEBUG"


@pytest.mark.parametrize(("name", "value"), [
    ("COALESCE_WINDOW_SECONDS", "soon"),
    ("MACHINE_OPENS", "maybe"),
    ("RATE_LIMIT_BURST", "lots"),
    ("HIGHLEVEL_BASE_URL", "http://services.leadconnectorhq.com"),
    ("TOKEN_ENCRYPTION_KEYS", "not-a-fernet-key"),
])
def test_bad_values_name_the_setting(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({**SECRETS, name: value}, instance_path=tmp_path)


def test_plain_http_is_allowed_only_on_loopback(tmp_path):
    cfg = load_config({**SECRETS, "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9100/"},
                      instance_path=tmp_path)
    assert cfg["HIGHLEVEL_BASE_URL"] == "http://127.0.0.1:9100"


@pytest.mark.parametrize(("given", "expected"), [
    ("postgres://u:p@db/relay", "postgresql+psycopg://u:p@db/relay"),
    ("postgresql://u@db:5433/relay", "postgresql+psycopg://u@db:5433/relay"),
    ("postgresql+psycopg://u@db/relay", "postgresql+psycopg://u@db/relay"),
    ("sqlite:///instance/relay.db", "sqlite:///instance/relay.db"),
])
def test_database_urls_as_users_paste_them(given, expected):
    assert normalize_database_url(given) == expected


def test_production_refuses_to_start_without_secrets_and_names_them(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config({"RELAY_ENV": "production", "ADMIN_API_KEYS": "ak"}, instance_path=tmp_path)
    message = str(err.value)
    for name in ("INGEST_API_KEYS", "PIXEL_SIGNING_KEYS", "TOKEN_ENCRYPTION_KEYS"):
        assert name in message
    assert "ADMIN_API_KEYS" not in message
    assert not (tmp_path / "dev-secrets.json").exists()


def test_production_with_secrets_starts_and_logs_json(tmp_path):
    cfg = load_config(PRODUCTION, instance_path=tmp_path)
    assert cfg["LOG_FORMAT"] == "json"
    assert cfg["PUBLIC_BASE_URL"] == "https://relay.example"
    assert not (tmp_path / "dev-secrets.json").exists()


SHORT = "ik_" + "s" * 28  # 31 characters


@pytest.mark.parametrize(("settings", "named"), [
    ({"INGEST_API_KEYS": SHORT}, ["INGEST_API_KEYS", "at least 32 characters", "key 1"]),
    ({"INGEST_API_KEYS": f"{INGEST_ONE},{SHORT}"}, ["INGEST_API_KEYS", "key 2"]),
    ({"ADMIN_API_KEYS": "ak"}, ["ADMIN_API_KEYS", "at least 32 characters"]),
    ({"ADMIN_API_KEYS": f"{ADMIN_ONE},{INGEST_TWO}"}, ["INGEST_API_KEYS and ADMIN_API_KEYS"]),
    ({"ADMIN_API_KEYS": INGEST_ONE, "INGEST_API_KEYS": INGEST_ONE},
     ["INGEST_API_KEYS and ADMIN_API_KEYS"]),
    ({"PUBLIC_BASE_URL": None}, ["PUBLIC_BASE_URL"]),
    ({"PUBLIC_BASE_URL": ""}, ["PUBLIC_BASE_URL"]),
    ({"HIGHLEVEL_WEBHOOK_PUBLIC_KEY": "MCowBQYDK2VwAyEA"},
     ["HIGHLEVEL_WEBHOOK_PUBLIC_KEY", "HIGHLEVEL_CLIENT_ID"]),
    ({"HIGHLEVEL_WEBHOOK_PUBLIC_KEY": "MCowBQYDK2VwAyEA", "HIGHLEVEL_CLIENT_ID": ""},
     ["HIGHLEVEL_WEBHOOK_PUBLIC_KEY", "HIGHLEVEL_CLIENT_ID"]),
], ids=["short ingest key", "one short ingest key", "short admin key", "shared key",
        "same key lists", "no public base url", "empty public base url",
        "webhook key without client id", "webhook key with empty client id"])
def test_production_refuses_unsafe_settings_naming_them(tmp_path, settings, named):
    environ = {k: v for k, v in {**PRODUCTION, **settings}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        load_config(environ, instance_path=tmp_path)
    message = str(err.value)
    for text in named:
        assert text in message
    for key in (INGEST_ONE, INGEST_TWO, ADMIN_ONE, SHORT):  # named, never shown
        assert key not in message


def test_production_names_every_problem_at_once(tmp_path):
    environ = {**PRODUCTION, "INGEST_API_KEYS": "ik_short", "ADMIN_API_KEYS": "ik_short",
               "PUBLIC_BASE_URL": "", "HIGHLEVEL_WEBHOOK_PUBLIC_KEY": "MCowBQYDK2VwAyEA"}
    with pytest.raises(ConfigError) as err:
        load_config(environ, instance_path=tmp_path)
    for name in ("INGEST_API_KEYS:", "ADMIN_API_KEYS:", "share a key", "PUBLIC_BASE_URL",
                 "HIGHLEVEL_CLIENT_ID"):
        assert name in str(err.value)


@pytest.mark.parametrize("settings", [
    {"INGEST_API_KEYS": "ik_" + "x" * 29},  # exactly 32 characters
    {"HIGHLEVEL_WEBHOOK_PUBLIC_KEY": "MCowBQYDK2VwAyEA", "HIGHLEVEL_CLIENT_ID": "app-123"},
], ids=["32-character key", "webhook key with client id"])
def test_production_accepts_what_is_safe(tmp_path, settings):
    assert load_config({**PRODUCTION, **settings}, instance_path=tmp_path)["RELAY_ENV"] == (
        "production")


def test_generated_secrets_are_fit_for_production(tmp_path):
    """What ``keys generate`` prints passes production's checks."""
    generated = {name: ",".join(values) for name, values in generate_secrets().items()}
    cfg = load_config({**generated, "RELAY_ENV": "production",
                       "PUBLIC_BASE_URL": "https://relay.example"}, instance_path=tmp_path)
    assert cfg["INGEST_API_KEYS"] != cfg["ADMIN_API_KEYS"]


@pytest.mark.parametrize("env", ["development", "test"])
def test_development_and_test_keep_their_defaults_and_short_keys(tmp_path, env):
    cfg = load_config({**SECRETS, "RELAY_ENV": env, "INGEST_API_KEYS": "ik",
                       "HIGHLEVEL_WEBHOOK_PUBLIC_KEY": "MCowBQYDK2VwAyEA"},
                      instance_path=tmp_path)
    assert cfg["PUBLIC_BASE_URL"] == "http://localhost:8000"
    assert cfg["INGEST_API_KEYS"] == ["ik"]


def test_development_generates_secrets_once_privately(tmp_path, capsys):
    first = load_config({}, instance_path=tmp_path)
    path = tmp_path / "dev-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = capsys.readouterr().err
    assert first["INGEST_API_KEYS"][0] in printed and first["ADMIN_API_KEYS"][0] in printed
    assert first["TOKEN_ENCRYPTION_KEYS"][0] not in printed
    second = load_config({}, instance_path=tmp_path)
    assert capsys.readouterr().err == ""  # printed only when made
    for name in ("INGEST_API_KEYS", "ADMIN_API_KEYS", "PIXEL_SIGNING_KEYS",
                 "TOKEN_ENCRYPTION_KEYS"):
        assert first[name] == second[name]
    assert set(json.loads(path.read_text())) == set(SECRETS)


def test_explicit_secrets_win_over_generated_ones(tmp_path):
    load_config({}, instance_path=tmp_path)
    cfg = load_config({"INGEST_API_KEYS": "mine"}, instance_path=tmp_path)
    assert cfg["INGEST_API_KEYS"] == ["mine"]


def test_overrides_from_tests_skip_the_environment(tmp_path):
    cfg = load_config({"COALESCE_WINDOW_SECONDS": "999", **SECRETS},
                      {"COALESCE_WINDOW_SECONDS": 3, "TESTING": True}, instance_path=tmp_path)
    assert cfg["COALESCE_WINDOW_SECONDS"] == 3 and cfg["TESTING"] is True
