"""A real headless Chromium opens an invoice email; the pixel records one view, sent to HighLevel.

The relay (the real Flask app) and a stand-in webmail server each listen on 127.0.0.1 over
real HTTP. The email is shaped like a HighLevel invoice email (a table with the invoice
number and amount, a "View invoice" button) and carries the ``<img>`` minted by
``POST /v1/pixel-urls`` verbatim. Chromium (Debian's ``chromium``; CI installs it) loads
the page once, dumping the DOM and a screenshot. Then the forwarder runs once and the fake
HighLevel must have received exactly one PATCH for that invoice with the location's token.

The test uses the real clock: a pixel token has no expiry unless asked for one.

A second test opens the relay's ``/docs`` with every request not for loopback sent to a trap
proxy: Swagger UI must render the API from the relay's own files, asking nothing elsewhere.
"""

from __future__ import annotations

import html
import os
import re
import signal
import socketserver
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from service import create_app
from service.store.db import events
from service.store.engine import upgrade

from .conftest import ADMIN_KEY, INGEST_KEY, test_config
from .fake_highlevel import FakeHighLevel

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 60.0
LOCATION = "6578278e879ad2646715ba9c"
INVOICE = "6578278e879ad2646715ba9d"
HL_TOKEN = "pit-browser-" + "b" * 24
EMAIL_PATH = "/mail/message/1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The webmail page: its own chrome around the message, the message as sent, and one
# script of the *webmail* (never the email) reporting how the pixel rendered, so the
# dumped DOM shows that Chromium decoded a 1x1 invisible image, not a broken one.
WEBMAIL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Inbox - Invoice INV-000123</title></head>
<body style="margin:0;font-family:sans-serif;background:#f3f4f6">
<div style="padding:8px 16px;background:#1f2937;color:#fff">Mail &middot; Inbox</div>
<div id="message" style="max-width:600px;margin:16px auto;background:#fff">
{email}
</div>
<script>
window.addEventListener("load", function () {{
  var img = document.querySelector('#message img[src*="/v1/pixel/"]');
  var box = img ? img.getBoundingClientRect() : null;
  document.body.setAttribute("data-pixel", img ? [
    img.complete, img.naturalWidth + "x" + img.naturalHeight,
    box.width + "x" + box.height, getComputedStyle(img).opacity].join(" ") : "missing");
}});
</script>
</body></html>
"""

EMAIL = """<table role="presentation" width="100%" cellpadding="0" cellspacing="0"
       style="border-collapse:collapse;font-size:14px;color:#111827">
  <tr><td colspan="2" style="padding:24px;font-size:20px;font-weight:bold">
    Acme Plumbing LLC</td></tr>
  <tr><td colspan="2" style="padding:0 24px 16px">Hi Jane, here is your invoice.</td></tr>
  <tr><td style="padding:8px 24px;color:#6b7280">Invoice number</td>
      <td id="invoice-number" style="padding:8px 24px;text-align:right">INV-000123</td></tr>
  <tr><td style="padding:8px 24px;color:#6b7280">Issue date</td>
      <td style="padding:8px 24px;text-align:right">January 5, 2026</td></tr>
  <tr><td style="padding:8px 24px;color:#6b7280">Amount due</td>
      <td id="amount" style="padding:8px 24px;text-align:right;font-weight:bold">$1,250.00</td>
  </tr>
  <tr><td colspan="2" style="padding:24px;text-align:center">
    <a id="view-invoice" href="{portal}"
       style="display:inline-block;padding:12px 24px;background:#2563eb;color:#fff;
              text-decoration:none;border-radius:4px">View invoice</a></td></tr>
  <tr><td colspan="2" style="padding:16px 24px;font-size:12px;color:#9ca3af">
    Questions? Reply to this email.</td></tr>
</table>
{pixel}
"""


@pytest.fixture
def chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium not installed: apt-get install chromium")
    return CHROMIUM


@contextmanager
def serve(wsgi: Callable) -> Iterator[str]:
    """Serve ``wsgi`` over real HTTP on 127.0.0.1 in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                              name=f"http-{server.server_port}")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Relay:
    """A WSGI front for the app (created once the port is known) that notes every request."""

    def __init__(self):
        self.app = None
        self.seen: list[tuple[str, str, str]] = []  # (method, path, User-Agent)
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                              environ.get("HTTP_USER_AGENT", "")))
        return self.app(environ, start_response)

    def pixel_requests(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self.seen if r[1].startswith("/v1/pixel/")]


def webmail(page: str) -> Callable:
    """The stand-in webmail: the message at EMAIL_PATH, 404 for anything else (favicon)."""

    def wsgi(environ, start_response):
        request = Request(environ)
        if request.path == EMAIL_PATH:
            resp = Response(page, mimetype="text/html")
        else:
            resp = Response("not found", status=404, mimetype="text/plain")
        return resp(environ, start_response)

    return wsgi


def run_chromium(chromium: Path, url: str, tmp_path: Path, *, expect: str = "data-pixel=",
                 proxy: str | None = None) -> tuple[str, Path]:
    """Open ``url`` in headless Chromium once; return the dumped DOM and the screenshot path.
    ``expect``: what the DOM must hold to count as dumped. ``proxy``: where Chromium sends
    every request not for loopback (which it never proxies); none by default."""
    screenshot = tmp_path / "email.png"
    args = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        f"--proxy-server={proxy}" if proxy else "--no-proxy-server",
        "--mute-audio", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000", "--window-size=800,600",
        f"--screenshot={screenshot}", "--dump-dom", url,
    ]
    # Its own session, so a hung browser and its helper processes are killed together.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                            errors="replace")
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT:g}s; "
                    f"stderr:\n{stderr_tail(err)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}; stderr:\n{stderr_tail(err)}"
    assert expect in out, f"no DOM dumped; stderr:\n{stderr_tail(err)}"
    return out, screenshot


def stderr_tail(err: str, lines: int = 40) -> str:
    """Chromium's stderr without the D-Bus noise of a machine with no session bus."""
    useful = [line for line in err.splitlines() if "dbus" not in line.lower()]
    return "\n".join(useful[-lines:]) or "(empty)"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_headless_chromium_opening_the_email_records_one_view_and_forwards_it(
        chromium, db_url, tmp_path):
    relay = Relay()
    with FakeHighLevel(tokens={HL_TOKEN}, enforce_rate_limit=False) as fake, \
            serve(relay) as relay_url, requests.Session() as http:
        app = create_app(test_config(db_url, PUBLIC_BASE_URL=relay_url,
                                     HIGHLEVEL_BASE_URL=fake.url, MACHINE_OPENS="forward"))
        svc = app.extensions["service"]  # the real clock: no Clock fixture here
        http.trust_env = False  # loopback only, whatever proxy the environment names
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        try:
            upgrade(svc.engine)
            relay.app = app
            resp = http.post(f"{relay_url}/v1/pixel-urls", headers=admin, timeout=10,
                             json={"locationId": LOCATION, "invoiceId": INVOICE})
            assert resp.status_code == 200, resp.text
            minted = resp.json()
            assert minted["url"].startswith(f"{relay_url}/v1/pixel/")
            assert minted["url"].endswith(".gif")
            assert f'src="{html.escape(minted["url"], quote=True)}"' in minted["html"]

            portal = f"https://invoices.example.com/invoice/{INVOICE}"
            page = WEBMAIL_PAGE.format(email=EMAIL.format(portal=portal, pixel=minted["html"]))
            with serve(webmail(page)) as mail_url:
                dom, screenshot = run_chromium(chromium, mail_url + EMAIL_PATH, tmp_path)

            # Chromium rendered the email, and the pixel as a decoded, invisible 1x1 image.
            assert "INV-000123" in dom and "$1,250.00" in dom and "View invoice" in dom
            # complete, natural size, laid-out size, opacity
            assert re.search(r'data-pixel="([^"]*)"', dom)[1] == "true 1x1 1x1 0"
            assert screenshot.stat().st_size > 0
            assert png_size(screenshot) == (800, 600)

            # The browser asked for the pixel exactly once, and that GET recorded one view.
            [(method, _path, ua)] = relay.pixel_requests()
            assert method == "GET"
            assert "Chrome/" in ua, ua  # HeadlessChrome/<version> in headless mode
            with svc.engine.connect() as conn:
                [row] = conn.execute(sa.select(events)).all()
            assert (row.kind, row.location_id, row.document_id, row.source) == (
                "invoice", LOCATION, INVOICE, "pixel")
            assert row.user_agent == ua and row.ip == "127.0.0.0"  # RETAIN_CLIENT_IP=truncate
            expected = svc.classifier.classify(user_agent=ua, ip="127.0.0.1")
            assert (row.verdict, row.verdict_reason) == (expected.verdict, expected.reason)
            assert row.forward is True  # MACHINE_OPENS=forward: whatever the verdict

            # A token for the location, then one forwarder pass: one PATCH, that token.
            resp = http.put(f"{relay_url}/v1/locations/{LOCATION}/token", headers=admin,
                            json={"accessToken": HL_TOKEN}, timeout=10)
            assert resp.status_code == 200, resp.text
            result = app.test_cli_runner().invoke(args=["forwarder", "--once"])
            assert result.exit_code == 0, result.output
            assert "forwarder handled 1 document(s)" in result.output

            patches = [r for r in fake.requests if r.method == "PATCH"]
            assert [(r.path, r.document_id, r.token, r.status) for r in patches] == [
                ("/invoices/stats/last-visited-at", INVOICE, HL_TOKEN, 200)]
            assert patches[0].json == {"invoiceId": INVOICE}
            assert fake.violations == []

            resp = http.get(f"{relay_url}/v1/events/{row.id}", timeout=10,
                            headers={"Authorization": f"Bearer {INGEST_KEY}"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "delivered"
        finally:
            svc.engine.dispose()
    assert fake.violations == [], fake.violations


# -- /docs: Swagger UI renders from the relay alone -----------------------------------------

# What Debian's Chromium asks for itself, even for about:blank and whatever its flags (clock,
# component updates, sign-in): not the page's doing, so not held against it. They reach the
# trap, never the network.
CHROMIUM_OWN_HOSTS = {"clients2.google.com", "update.googleapis.com", "accounts.google.com"}


class OutsideTrap(socketserver.ThreadingTCPServer):
    """Chromium's proxy for everything not on loopback: notes each request's first line
    (``CONNECT host:443 ...`` or ``GET http://host/...``) and answers 502, so nothing the
    page asks of another host is fetched, and the test sees that it was asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.asked: list[str] = []
        trap = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                trap.asked.append(self.rfile.readline(4096).decode("latin-1").strip())
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)

    def hosts(self) -> set[str | None]:
        """The hosts asked for: ``CONNECT host:port`` or a proxy request's absolute URL."""
        targets = [line.split(" ")[1] if " " in line else line for line in self.asked]
        return {urlsplit(t if "://" in t else f"//{t}").hostname for t in targets}


@contextmanager
def outside_trap() -> Iterator[OutsideTrap]:
    trap = OutsideTrap()
    thread = threading.Thread(target=trap.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield trap
    finally:
        trap.shutdown()
        trap.server_close()
        thread.join(timeout=5)


def test_headless_chromium_renders_the_docs_with_nothing_fetched_off_loopback(
        chromium, tmp_path):
    relay = Relay()
    with serve(relay) as relay_url, outside_trap() as trap:
        # The docs touch no store: an in-memory SQLite one that is never opened.
        app = create_app(test_config("sqlite://", PUBLIC_BASE_URL=relay_url))
        relay.app = app
        try:
            dom, screenshot = run_chromium(
                chromium, f"{relay_url}/docs", tmp_path, expect="swagger-ui-container",
                proxy=f"http://127.0.0.1:{trap.server_address[1]}")
        finally:
            app.extensions["service"].engine.dispose()
    # Not a CDN, not a validator: the page asked nothing of any host but the relay.
    assert trap.hosts() - CHROMIUM_OWN_HOSTS == set(), trap.asked
    # Swagger UI ran: the spec's title and its operations, each with its path.
    assert "Invoice view relay" in dom
    assert 'data-path="/v1/events"' in dom and 'data-path="/v1/events/{event_id}"' in dom
    asked = {(method, path) for method, path, _ua in relay.seen}
    assert {("GET", "/docs"), ("GET", "/openapi.json")} <= asked
    assets = {p.rpartition("/")[2] for m, p in asked if p.startswith("/docs/assets/")}
    assert {"swagger-ui.css", "swagger-ui-bundle.js"} <= assets
    assert png_size(screenshot) == (800, 600)
