"""Log lines: what they may quote of a request (service/logging.py, config/gunicorn.conf.py).

A pixel or beacon token records views, so it is a credential: no log line holds one whole.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import logging.config
import runpy
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from service.logging import configure_logging, logging_config, redact_path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "AbCdEfGh" + secrets.token_urlsafe(40)  # shaped like a signed pixel token
KEPT = TOKEN[:8]  # what a log line may show of it


@pytest.mark.parametrize(("path", "logged"), [
    (f"/v1/pixel/{TOKEN}.gif", "/v1/pixel/AbCdEfGh\u2026.gif"),
    (f"/v1/pixel/{TOKEN}", "/v1/pixel/AbCdEfGh\u2026"),
    (f"/v1/beacon/{TOKEN}", "/v1/beacon/AbCdEfGh\u2026"),
    (f"/v1/pixel/{TOKEN}.gif?utm=1", "/v1/pixel/AbCdEfGh\u2026.gif?\u2026"),
    ("/oauth/callback?code=0123456789abcdef&state=x.y.z", "/oauth/callback?\u2026"),
    (f"http://relay.example/v1/pixel/{TOKEN}.gif", "http://relay.example/v1/pixel/AbCdEfGh\u2026.gif"),
    (f"/v1/%70ixel/{TOKEN}.gif", "/v1/pixel/AbCdEfGh\u2026.gif"),  # percent-encoded route
    (f"GET /v1/pixel/{TOKEN}.gif HTTP/1.1", "GET /v1/pixel/AbCdEfGh\u2026.gif HTTP/1.1"),
    ("/v1/pixel/short.gif", "/v1/pixel/short.gif"),  # nothing left to hide
    ("/v1/events", "/v1/events"),
    ("/v1/locations/loc_1/token", "/v1/locations/loc_1/token"),
    ("", ""),
])
def test_redact_path(path, logged):
    assert redact_path(path) == logged


def test_access_lines_show_a_pixel_tokens_first_characters_only(monkeypatch):
    """config/gunicorn.conf.py's AccessLogger, set up by gunicorn's own Logger.setup from
    that file's logging config, fed a pixel GET, a beacon POST and a failed request."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    settings = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    out = io.StringIO()
    logconfig = settings["logconfig_dict"]
    logconfig["handlers"]["stdout"]["stream"] = out
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("logconfig_dict", logconfig)
    try:
        log = settings["AccessLogger"](cfg)
        for method, path in (("GET", f"/v1/pixel/{TOKEN}.gif"), ("POST", f"/v1/beacon/{TOKEN}")):
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": "10.0.0.1",
                       "HTTP_USER_AGENT": "Mail/1.0"}
            resp = SimpleNamespace(status="200 OK", sent=43, headers=[("X-Request-ID", "r1")])
            log.access(resp, None, environ, dt.timedelta(milliseconds=2))
        # What gunicorn's worker writes when the app raises (the raw target, query and all),
        # and its DEBUG line per request.
        log.exception("Error handling request %s %s", "GET", f"/v1/pixel/{TOKEN}.gif?a=b")
        log.error("Invalid request from ip=10.0.0.1: Invalid HTTP request line: "
                  f"'GET /v1/beacon/{TOKEN} HTTP/1.1 x'")
    finally:
        configure_logging()  # the service's own config again, for the tests that follow
    text = out.getvalue()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [r["path"] for r in records if r["event"] == "http.request"] == [
        f"/v1/pixel/{KEPT}\u2026.gif", f"/v1/beacon/{KEPT}\u2026"]
    errors = [r["event"] for r in records if r["logger"] == "gunicorn.error"]
    assert f"Error handling request GET /v1/pixel/{KEPT}\u2026.gif?\u2026" in errors
    assert any(f"/v1/beacon/{KEPT}\u2026 HTTP/1.1" in e for e in errors), errors
    assert TOKEN not in text and TOKEN[:12] not in text


def test_service_lines_quoting_a_path_are_redacted_too():
    """The handler's filter covers every logger, e.g. the development server's access line
    (werkzeug) and any line that carries a request target in its arguments."""
    cfg = logging_config("DEBUG", "text")
    out = io.StringIO()
    cfg["handlers"]["stdout"]["stream"] = out
    logging.config.dictConfig(cfg)
    try:
        logging.getLogger("werkzeug").info('%s - - "%s" %s -', "127.0.0.1",
                                           f"GET /v1/pixel/{TOKEN}.gif HTTP/1.1", "200")
        logging.getLogger("service.test").info(f"seen /v1/beacon/{TOKEN}")
    finally:
        configure_logging()
    text = out.getvalue()
    assert f"/v1/pixel/{KEPT}\u2026.gif" in text and f"/v1/beacon/{KEPT}\u2026" in text
    assert TOKEN not in text


def test_json_lines_carry_the_event_its_fields_and_the_traceback():
    """The production format: ts, level, logger, event, the extra fields that have a value,
    the request id, and ``exc`` last when there is a traceback."""
    cfg = logging_config("INFO", "json")
    out = io.StringIO()
    cfg["handlers"]["stdout"]["stream"] = out
    logging.config.dictConfig(cfg)
    log = logging.getLogger("service.forward.test")
    try:
        log.info("delivery.attempt", extra={"location_id": "loc_1", "attempt": 2,
                                            "status": None, "at": dt.date(2026, 1, 2)})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("forwarder.crashed", extra={"request_id": "rid-1"})
        log.debug("not at INFO")
    finally:
        configure_logging()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(first) == ["ts", "level", "logger", "event", "location_id", "attempt", "at"]
    assert first["level"] == "info" and first["logger"] == "service.forward.test"
    assert (first["event"], first["location_id"], first["attempt"], first["at"]) == (
        "delivery.attempt", "loc_1", 2, "2026-01-02")
    assert dt.datetime.fromisoformat(first["ts"]).utcoffset() == dt.timedelta(0)
    assert len(first["ts"]) == len("2026-01-02T03:04:05.678+00:00")  # milliseconds
    assert list(second)[-2:] == ["request_id", "exc"] and second["request_id"] == "rid-1"
    assert second["level"] == "error" and second["event"] == "forwarder.crashed"
    assert second["exc"].startswith("Traceback") and "RuntimeError: boom" in second["exc"]
