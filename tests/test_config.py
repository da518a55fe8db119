"""Configuration: one inventory, typed, with production refusing to start without secrets."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.fernet import Fernet

from service.config import ConfigError, load_config, normalize_database_url

SECRETS = {
    "INGEST_API_KEYS": "ik_one, ik_two",
    "ADMIN_API_KEYS": "ak_one",
    "PIXEL_SIGNING_KEYS": "p1,p2",
    "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
}


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
    assert cfg["INGEST_API_KEYS"] == ["ik_one", "ik_two"]
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
    cfg = load_config({**SECRETS, "RELAY_ENV": "production"}, instance_path=tmp_path)
    assert cfg["LOG_FORMAT"] == "json"
    assert not (tmp_path / "dev-secrets.json").exists()


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
