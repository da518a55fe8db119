"""Shared fixtures: an app on a real SQLite file (and PostgreSQL when TEST_DATABASE_URL is set)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import create_app
from service.config import normalize_database_url
from service.store.db import metadata
from service.store.engine import create_engine, head_revision, upgrade
from service.store.queue import View

from .fake_highlevel import FakeHighLevel
from .processes import (
    HL_TOKEN,
    PARKED_TOKEN,
    Processes,
    Relay,
    base_env,
    flask,
    free_port,
    gunicorn,
)

UTC = dt.UTC
INGEST_KEY = "ik_test_" + "i" * 24
ADMIN_KEY = "ak_test_" + "a" * 24
PIXEL_KEY = "pixel-test-key-" + "p" * 20
FERNET_KEY = Fernet.generate_key().decode()
SESSION_KEY = "session-test-key-" + "s" * 20
T0 = dt.datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)

PG_URL = os.environ.get("TEST_DATABASE_URL")
# A store that is down: nothing listens on port 1, so each connection is refused at once.
# create_app connects lazily, so an app on it starts and its requests meet the outage.
UNREACHABLE_DB_URL = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
# Metrics stay in this process's memory (the e2e tests give gunicorn its own directory): a
# developer's PROMETHEUS_MULTIPROC_DIR must neither receive nor change what tests count.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


class Clock:
    """A clock tests move by hand; the app, store and forwarder all read it."""

    def __init__(self, start: dt.datetime = T0):
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def db_url(backend, tmp_path):
    """A fresh, empty database: a SQLite file, or a private PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/relay.db"
        return
    url = normalize_database_url(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """One SQLite file migrated by Alembic per session; each test gets a copy (fast)."""
    path = tmp_path_factory.mktemp("template") / "relay.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def migrated_db_url(backend, db_url, sqlite_template, tmp_path):
    """A database at the head revision. SQLite: a copy of the migrated template;
    PostgreSQL: the tables created from the metadata and stamped (test_migrations
    proves the migrations produce exactly that schema)."""
    if backend == "sqlite":
        shutil.copy(sqlite_template, tmp_path / "relay.db")
        return db_url
    engine = create_engine(db_url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{head_revision()}')")
    engine.dispose()
    return db_url


def test_config(db_url: str, **overrides) -> dict:
    """The settings every test app starts from (no environment read for secrets)."""
    return {
        "RELAY_ENV": "test",
        "DATABASE_URL": db_url,
        "INGEST_API_KEYS": [INGEST_KEY],
        "ADMIN_API_KEYS": [ADMIN_KEY],
        "PIXEL_SIGNING_KEYS": [PIXEL_KEY],
        "TOKEN_ENCRYPTION_KEYS": [FERNET_KEY],
        "SESSION_SECRET_KEYS": [SESSION_KEY],
        "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "INFO",
        **overrides,
    }


test_config.__test__ = False  # a helper, not a test


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app(migrated_db_url, clock):
    app = create_app(test_config(migrated_db_url))
    svc = app.extensions["service"]
    svc.clock = clock
    yield app
    svc.engine.dispose()


@pytest.fixture
def down_app(clock):
    """An app on UNREACHABLE_DB_URL: it starts, and its requests meet a store outage."""
    app = create_app(test_config(UNREACHABLE_DB_URL))
    app.extensions["service"].clock = clock
    yield app
    app.extensions["service"].engine.dispose()


@pytest.fixture
def services(app):
    return app.extensions["service"]


@pytest.fixture
def store(services):
    return services.store


@pytest.fixture
def vault(services):
    return services.vault


@pytest.fixture
def client(app):
    client = app.test_client()  # as a person's browser: Flask's "Werkzeug/x" has no client token
    client.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"
    return client


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def fake_highlevel():
    """The fake HighLevel server on loopback (validates requests against the OpenAPI docs)."""
    with FakeHighLevel(enforce_rate_limit=False) as server:
        yield server
    assert server.violations == [], server.violations


# -- real processes (tests/test_e2e.py, tests/test_reliability.py) -------------------------


@pytest.fixture
def fake() -> Iterator[FakeHighLevel]:
    """The fake HighLevel, accepting only our tokens; it must see no contract violation."""
    server = FakeHighLevel(tokens={HL_TOKEN, PARKED_TOKEN}, enforce_rate_limit=False).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.violations == [], server.violations


@pytest.fixture
def start_relay(db_url, fake, tmp_path) -> Iterator[Callable[..., Relay]]:
    """Return ``start(**env)``: migrate, start gunicorn and a forwarder, wait until ready."""
    port = free_port()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    run_dir = tmp_path / "run"  # gunicorn >= 25.1 puts its control socket here, not in ~
    run_dir.mkdir(mode=0o700)
    # TMPDIR: where gunicorn makes its metrics directory; under tmp_path even if it is killed.
    procs = Processes(log_dir, {**base_env(db_url, fake.url, port),
                                "XDG_RUNTIME_DIR": str(run_dir), "TMPDIR": str(run_dir)})
    session = requests.Session()
    relay = Relay(procs, f"http://127.0.0.1:{port}", session)

    def start(**env: str) -> Relay:
        procs.env.update(env)
        out = procs.run("db-upgrade", flask("db", "upgrade"), timeout=60)
        assert "database at revision" in out, out
        relay.web = procs.start("gunicorn", gunicorn())
        relay.start_forwarder()
        relay.wait_ready()
        return relay

    try:
        yield start
    finally:
        session.close()
        procs.cleanup()


# -- a real browser (tests/test_console_browser.py, tests/test_relay_js.py) -----------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own download is never used


@pytest.fixture
def browser():
    """Headless Chromium driven by Playwright; skipped where chromium is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def ingest_headers(**extra) -> dict:
    return {"Authorization": f"Bearer {INGEST_KEY}", **extra}


def admin_headers(**extra) -> dict:
    return {"Authorization": f"Bearer {ADMIN_KEY}", **extra}


def make_event(**overrides) -> dict:
    """A valid JSON event; override or drop (value None) any field."""
    event = {"locationId": "loc_1", "invoiceId": "inv_1"}
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def make_view(now: dt.datetime = T0, **overrides) -> View:
    """A store-level view of invoice inv_1 at loc_1."""
    fields = {"kind": "invoice", "location_id": "loc_1", "document_id": "inv_1",
              "viewed_at": now}
    fields.update(overrides)
    return View(**fields)
