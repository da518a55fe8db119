"""Configuration: one inventory, typed, with production refusing to start without secrets."""

from __future__ import annotations

import json
import runpy
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service.config import (
    SETTINGS,
    ConfigError,
    generate_secrets,
    load_config,
    load_server_config,
    normalize_database_url,
)

INGEST_ONE, INGEST_TWO = "ik_one_" + "1" * 25, "ik_two_" + "2" * 25  # 32 characters each
ADMIN_ONE = "ak_one_" + "a" * 25
SECRETS = {
    "INGEST_API_KEYS": f"{INGEST_ONE}, {INGEST_TWO}",
    "ADMIN_API_KEYS": ADMIN_ONE,
    "PIXEL_SIGNING_KEYS": "p1,p2",
    "TOKEN_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "SESSION_SECRET_KEYS": "s1,s2",
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


@pytest.mark.parametrize("env", ["development", "test"])
def test_outside_production_public_base_url_follows_port(tmp_path, env):
    cfg = load_config({**SECRETS, "RELAY_ENV": env, "PORT": "8123"}, instance_path=tmp_path)
    assert cfg["PUBLIC_BASE_URL"] == "http://localhost:8123"
    explicit = load_config({**SECRETS, "RELAY_ENV": env, "PORT": "8123",
                            "PUBLIC_BASE_URL": "https://relay.example"}, instance_path=tmp_path)
    assert explicit["PUBLIC_BASE_URL"] == "https://relay.example"  # a set one is kept


def test_production_needs_public_base_url_whatever_the_port(tmp_path):
    production = {k: v for k, v in PRODUCTION.items() if k != "PUBLIC_BASE_URL"}
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL is not set"):
        load_config({**production, "PORT": "8123"}, instance_path=tmp_path)


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


def test_a_development_file_from_before_a_secret_existed_gets_it_added(tmp_path, capsys):
    """An instance/ made before SESSION_SECRET_KEYS keeps its keys and gains the new one."""
    path = tmp_path / "dev-secrets.json"
    older = {name: values for name, values in generate_secrets().items()
             if name != "SESSION_SECRET_KEYS"}
    path.write_text(json.dumps(older))
    path.chmod(0o600)
    cfg = load_config({}, instance_path=tmp_path)
    stored = json.loads(path.read_text())
    assert {name: stored[name] for name in older} == older  # the developer's keys stay
    assert cfg["SESSION_SECRET_KEYS"] == stored["SESSION_SECRET_KEYS"] != []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("dev-secrets.json.*"))  # no lock or partial file left
    assert load_config({}, instance_path=tmp_path)["SESSION_SECRET_KEYS"] == (
        cfg["SESSION_SECRET_KEYS"])  # added once
    assert capsys.readouterr().err == ""


def test_a_stale_lock_on_the_development_file_is_named(tmp_path):
    path = tmp_path / "dev-secrets.json"
    path.write_text(json.dumps({"INGEST_API_KEYS": ["ik"]}))
    (tmp_path / "dev-secrets.json.lock").touch()  # a process died while adding to it
    with pytest.raises(ConfigError, match="dev-secrets.json.lock"):
        load_config({}, instance_path=tmp_path)


def test_explicit_secrets_win_over_generated_ones(tmp_path):
    load_config({}, instance_path=tmp_path)
    cfg = load_config({"INGEST_API_KEYS": "mine"}, instance_path=tmp_path)
    assert cfg["INGEST_API_KEYS"] == ["mine"]


def test_overrides_from_tests_skip_the_environment(tmp_path):
    cfg = load_config({"COALESCE_WINDOW_SECONDS": "999", **SECRETS},
                      {"COALESCE_WINDOW_SECONDS": 3, "TESTING": True}, instance_path=tmp_path)
    assert cfg["COALESCE_WINDOW_SECONDS"] == 3 and cfg["TESTING"] is True


# -- each parser, through load_config: good values and what they become ----------------------


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("RATE_LIMIT_BURST", "100/10s", (100, 10.0)),
    ("RATE_LIMIT_BURST", "5/500ms", (5, 0.5)),
    ("RATE_LIMIT_BURST", "3/2m", (3, 120.0)),
    ("RATE_LIMIT_BURST", " 7 / 1.5 ", (7, 1.5)),  # seconds when no unit
    ("FORWARDER_METRICS_PORT", "9102", ("0.0.0.0", 9102)),
    ("FORWARDER_METRICS_PORT", " 127.0.0.1:9102 ", ("127.0.0.1", 9102)),
    ("FORWARDER_METRICS_PORT", "[::1]:65535", ("::1", 65535)),
    ("HIGHLEVEL_BASE_URL", "https://hl.example/v2/", "https://hl.example/v2"),
    ("HIGHLEVEL_BASE_URL", " http://localhost:9100 ", "http://localhost:9100"),
    ("HIGHLEVEL_MARKETPLACE_URL", "http://[::1]:9100/", "http://[::1]:9100"),
    ("SES_TOPIC_ARNS", " arn:a , arn:b,,", ["arn:a", "arn:b"]),
    ("SES_TOPIC_ARNS", ",", []),
    ("MACHINE_OPENS", " FORWARD ", "forward"),
    ("RETAIN_CLIENT_IP", "None", "none"),
    ("RELAY_ENV", "Test", "test"),
    ("LOG_FORMAT", "JSON", "json"),
    ("LOG_LEVEL", "warning", "WARNING"),
    ("COALESCE_WINDOW_SECONDS", " 7 ", 7),
    ("HIGHLEVEL_TIMEOUT_SECONDS", "2.5", 2.5),
    ("HIGHLEVEL_TIMEOUT_SECONDS", "10", 10.0),
    ("DATABASE_URL", "postgres://u@db/relay", "postgresql+psycopg://u@db/relay"),
    ("HIGHLEVEL_CLIENT_ID", " app-1 ", " app-1 "),  # strings are taken as they are
    ("PORT", "", 8000),  # empty counts as unset: the default
    ("HOST", "0.0.0.0", "0.0.0.0"),
    ("GUNICORN_MAX_REQUESTS", "1000", 1000),
])
def test_each_parser_reads_what_operators_write(tmp_path, name, raw, value):
    assert load_config({**SECRETS, name: raw}, instance_path=tmp_path)[name] == value


@pytest.mark.parametrize(("name", "raw"), [
    ("RATE_LIMIT_BURST", "10"),
    ("RATE_LIMIT_BURST", "10/s"),
    ("RATE_LIMIT_BURST", "/10s"),
    ("RATE_LIMIT_BURST", "10/10h"),
    ("RATE_LIMIT_BURST", "-1/10s"),
    ("FORWARDER_METRICS_PORT", "0"),
    ("FORWARDER_METRICS_PORT", "65536"),
    ("FORWARDER_METRICS_PORT", "127.0.0.1:"),
    ("FORWARDER_METRICS_PORT", "metrics"),
    ("HIGHLEVEL_BASE_URL", "http://hl.example"),
    ("HIGHLEVEL_MARKETPLACE_URL", "ftp://localhost/"),
    ("HIGHLEVEL_BASE_URL", "hl.example"),
    ("RETAIN_CLIENT_IP", "partial"),
    ("RELAY_ENV", "prod"),
    ("LOG_FORMAT", "xml"),
    ("PORT", "80a"),
    ("WEB_CONCURRENCY", "2.0"),
    ("GUNICORN_THREADS", "many"),
    ("TRUSTED_PROXIES", "yes"),
    ("HIGHLEVEL_TIMEOUT_SECONDS", "fast"),
    ("HIGHLEVEL_TIMEOUT_SECONDS", "nan"),  # a timeout must be a number of seconds
])
def test_each_parser_refuses_a_bad_value_naming_the_setting(tmp_path, name, raw):
    with pytest.raises(ConfigError, match=f"^{name}: ") as err:
        load_config({**SECRETS, name: raw}, instance_path=tmp_path)
    assert ";" not in str(err.value)  # that setting only


@pytest.mark.parametrize(("name", "raw"), [
    ("PORT", "s3cr3t"), ("RATE_LIMIT_BURST", "s3cr3t"), ("FORWARDER_METRICS_PORT", "s3cr3t:0"),
    ("HIGHLEVEL_BASE_URL", "http://s3cr3t@hl.example"), ("MACHINE_OPENS", "s3cr3t"),
])
def test_a_refused_value_is_not_quoted(tmp_path, name, raw):
    """A value pasted into the wrong variable may be a secret: the message names, never shows."""
    with pytest.raises(ConfigError, match=f"^{name}: ") as err:
        load_config({**SECRETS, name: raw}, instance_path=tmp_path)
    assert "s3cr3t" not in str(err.value)


def test_every_bad_setting_is_named_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config({**SECRETS, "PORT": "web", "MACHINE_OPENS": "maybe",
                     "RATE_LIMIT_BURST": "lots"}, instance_path=tmp_path)
    for name in ("PORT: ", "MACHINE_OPENS: ", "RATE_LIMIT_BURST: expected N/<interval>"):
        assert name in str(err.value)


# -- the web server's settings (config/gunicorn.conf.py) ---------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SERVER_NAMES = {"RELAY_ENV", "HOST", "PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS",
                "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT", "GUNICORN_MAX_REQUESTS",
                "TRUSTED_PROXIES", "LOG_LEVEL", "LOG_FORMAT"}


def test_the_server_settings_need_no_secrets_even_in_production(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where dev secrets would be written (instance/)
    cfg = load_server_config({"RELAY_ENV": "production"})
    assert set(cfg) == SERVER_NAMES
    assert (cfg["HOST"], cfg["PORT"], cfg["LOG_FORMAT"]) == ("127.0.0.1", 8000, "json")
    assert list(tmp_path.iterdir()) == []  # no dev secrets generated, none read


def test_the_server_settings_match_the_apps(tmp_path):
    environ = {**SECRETS, "PORT": "9000", "LOG_LEVEL": "debug", "GUNICORN_THREADS": "4"}
    server = load_server_config(environ)
    app = load_config(environ, instance_path=tmp_path)
    assert server == {name: app[name] for name in SERVER_NAMES}


def gunicorn_settings(monkeypatch, environ: dict[str, str]) -> dict:
    """Run config/gunicorn.conf.py as gunicorn does, with exactly ``environ`` for settings."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))


def test_gunicorn_defaults_come_from_the_inventory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = gunicorn_settings(monkeypatch, {})
    assert conf["bind"] == "127.0.0.1:8000"
    assert conf["workers"] == load_server_config({})["WEB_CONCURRENCY"] >= 2
    assert (conf["threads"], conf["timeout"], conf["graceful_timeout"]) == (16, 30, 25)
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (0, 0)
    assert conf["forwarded_allow_ips"] == "127.0.0.1,::1"
    assert conf["logconfig_dict"]["formatters"]["default"]["()"].endswith("TextFormatter")
    assert conf["logconfig_dict"]["loggers"]["gunicorn.error"]["level"] == "INFO"
    assert list(tmp_path.iterdir()) == []


def test_gunicorn_reads_the_environment_through_the_inventory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = gunicorn_settings(monkeypatch, {
        "RELAY_ENV": "Production",  # no secrets: the master starts; the workers check them
        "HOST": "0.0.0.0", "PORT": "9001", "WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "4",
        "GUNICORN_TIMEOUT": "60", "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "GUNICORN_MAX_REQUESTS": "500", "TRUSTED_PROXIES": "1", "LOG_LEVEL": "debug"})
    assert (conf["bind"], conf["workers"], conf["threads"]) == ("0.0.0.0:9001", 3, 4)
    assert (conf["timeout"], conf["graceful_timeout"]) == (60, 10)
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (500, 100)
    assert conf["forwarded_allow_ips"] == "*"
    assert conf["logconfig_dict"]["formatters"]["default"]["()"].endswith("JsonFormatter")
    assert conf["logconfig_dict"]["root"]["level"] == "DEBUG"
    assert conf["logconfig_dict"]["loggers"]["gunicorn.error"]["level"] == "DEBUG"
    assert list(tmp_path.iterdir()) == []  # no dev secrets from the master


def test_gunicorn_refuses_a_bad_setting_naming_it(monkeypatch):
    with pytest.raises(ConfigError, match="^GUNICORN_THREADS: "):
        gunicorn_settings(monkeypatch, {"GUNICORN_THREADS": "sixteen"})
