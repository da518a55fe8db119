"""The portal script in a real browser: a page on another origin includes ``/v1/relay.js``.

The relay runs as in production (gunicorn, a forwarder: the ``start_relay`` fixture) with
``BEACON_ALLOWED_ORIGINS`` naming one portal's origin; portal pages are served by a second
HTTP server on another port (another origin), and a third serves a portal the relay does
not allow. Each page carries the ``script`` tag that ``POST /v1/pixel-urls`` mints,
verbatim. Headless Chromium (Playwright, Debian's ``/usr/bin/chromium``) opens them; the
views are read back from the store.

Headless Chromium shows every page: a background target, a second tab, a minimised window,
focus emulation and ``Page.setWebLifecycleState`` all leave ``visibilityState`` "visible",
and Playwright turns prerendering (whose pages are hidden until shown) off through
DevTools. So a page "opened hidden" is one whose ``document.visibilityState`` an init
script reports as "hidden" until the test shows it (and fires ``visibilitychange``, as a
browser does); the script's own logic runs unchanged. Likewise a back/forward-cache
restore is the ``pageshow`` event with ``persisted`` a browser fires for it.

Calls to ``navigator.sendBeacon`` and ``fetch`` are noted by a wrapper installed before the
page's scripts run (it calls the browser's own), so the test knows what the script sent,
and when a fetch failed, without waiting for something not to happen.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.store.db import events
from service.store.engine import create_engine

from .processes import ADMIN_KEY, wait_for
from .test_browser import serve

pytestmark = pytest.mark.e2e

LOCATION = "loc_portal"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Invoice {doc}</title></head>
<body><h1>Acme Plumbing LLC</h1><p>Invoice {doc}: $1,250.00 due</p>
{tags}
</body></html>
"""
# Notes what the script sends; installed before any script of the page.
RECORDER = """
window.__sent = [];
(function () {
  var beacon = navigator.sendBeacon && navigator.sendBeacon.bind(navigator);
  if (beacon) navigator.sendBeacon = function (url, data) {
    var queued = beacon(url, data);
    window.__sent.push({via: "beacon", url: String(url), queued: queued});
    return queued;
  };
  var fetch = window.fetch.bind(window);
  window.fetch = function (url, init) {
    var note = {via: "fetch", url: String(url), init: JSON.stringify(init || {})};
    window.__sent.push(note);
    var answer = fetch(url, init);
    answer.then(function (r) { note.status = r.status; },
                function (e) { note.status = "failed"; note.error = String(e); });
    return answer;
  };
  window.__globals = Object.getOwnPropertyNames(window);
})();
"""
NO_BEACON = "delete Navigator.prototype.sendBeacon;"
HIDDEN = """
(function () {
  var hidden = true;
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true, get: function () { return hidden ? "hidden" : "visible"; }});
  Object.defineProperty(Document.prototype, "hidden",
                        {configurable: true, get: function () { return hidden; }});
  window.__show = function () {
    hidden = false;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""
SENT = "() => window.__sent.map(s => Object.assign({}, s))"
NEW_GLOBALS = """() => Object.getOwnPropertyNames(window)
    .filter(n => n !== "__globals" && !__globals.includes(n))"""


class Portal:
    """Pages of one portal origin: ``publish(path, html)``, then open ``url + path``."""

    def __init__(self):
        self.pages: dict[str, str] = {}
        self.url = ""

    def __call__(self, environ, start_response):
        page = self.pages.get(environ.get("PATH_INFO", ""))
        status = "200 OK" if page is not None else "404 Not Found"
        body = (page or "not found").encode()
        start_response(status, [("Content-Type", "text/html; charset=utf-8"),
                                 ("Content-Length", str(len(body)))])
        return [body]

    def publish(self, path: str, tags: list[str], doc: str) -> str:
        self.pages[path] = PAGE.format(doc=doc, tags="\n".join(tags))
        return self.url + path


class Network:
    """What a page's requests looked like on the wire, preflights included (CDP's Network
    domain: Playwright's own events leave preflights out)."""

    def __init__(self, context, page):
        self.requests: list[tuple[str, str]] = []  # (method, url)
        self.preflights: list[dict] = []  # responses
        cdp = context.new_cdp_session(page)
        cdp.on("Network.requestWillBeSent", lambda e: self.requests.append(
            (e["request"]["method"], e["request"]["url"])))
        cdp.on("Network.responseReceived", lambda e: self.preflights.append(e["response"])
               if e["type"] == "Preflight" else None)
        cdp.send("Network.enable")

    def preflights_seen(self, page, *, timeout: float = 10.0) -> list[dict]:
        """The preflights' answers, once one has come: CDP events reach Python only while a
        Playwright call runs, and the page's fetch can settle before the event is handed
        over, so the wait is the page's own."""
        return wait_for(lambda: page.wait_for_timeout(50) or self.preflights,
                        timeout=timeout, what="a preflight's answer")


def mint(relay, document_id: str, kind: str = "invoiceId") -> dict:
    status, minted = relay.request("POST", "/v1/pixel-urls", key=ADMIN_KEY,
                                   body={"locationId": LOCATION, kind: document_id})
    assert status == 200, minted
    return minted


class Views:
    """``views(document_id)``: (event rows, views) the store holds for a document."""

    def __init__(self, db_url: str):
        self.engine = create_engine(db_url)

    def __call__(self, document_id: str) -> tuple[int, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.views).where(
                events.c.location_id == LOCATION, events.c.document_id == document_id)).all()
        return len(rows), sum(r.views for r in rows)


@pytest.fixture
def portals():
    """Two portal origins on loopback: ``allowed`` and ``other``."""
    allowed, other = Portal(), Portal()
    with serve(allowed) as allowed_url, serve(other) as other_url:
        allowed.url, other.url = allowed_url, other_url
        yield allowed, other


def test_a_portal_page_sends_one_view_once_visible(start_relay, portals, browser, db_url):
    allowed, other = portals
    relay = start_relay(BEACON_ALLOWED_ORIGINS=allowed.url)
    assert allowed.url != relay.url  # another origin: another port
    views = Views(db_url)
    context = browser.new_context()
    context.add_init_script(RECORDER)
    try:
        # A visible page with two documents' tags, and one of them twice: one view each.
        invoice, estimate = mint(relay, "inv_seen"), mint(relay, "est_seen", "estimateId")
        url = allowed.publish("/invoice", [invoice["script"], estimate["script"],
                                           invoice["script"]], "inv_seen")
        page = context.new_page()
        scripts = []
        page.on("response", lambda r: scripts.append(r) if "/v1/relay.js" in r.url else None)
        page.goto(url, wait_until="load")  # async scripts run before "load"
        wait_for(lambda: views("inv_seen") == (1, 1) and views("est_seen") == (1, 1),
                 timeout=20, what="one view of each document")
        sent = page.evaluate(SENT)
        assert sorted((s["via"], s["url"], s["queued"]) for s in sent) == sorted([
            ("beacon", invoice["beaconUrl"], True), ("beacon", estimate["beaconUrl"], True)])
        # More visibility changes are the same page view: nothing more is sent.
        page.evaluate("() => { for (let i = 0; i < 3; i++) "
                      "document.dispatchEvent(new Event('visibilitychange')); }")
        assert len(page.evaluate(SENT)) == 2
        # No globals, no cookies, no storage.
        assert page.evaluate(NEW_GLOBALS) == []
        assert page.evaluate("() => [document.cookie, localStorage.length, "
                             "sessionStorage.length]") == ["", 0, 0]
        # The versioned script is cached for a year, and loaded once for three tags.
        [script] = scripts
        assert script.url == invoice["script"].split('"')[1]
        headers = script.all_headers()
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["etag"] and "set-cookie" not in headers

        # Back from the back/forward cache: shown again, one more view of each.
        page.evaluate("() => window.dispatchEvent("
                      "new PageTransitionEvent('pageshow', {persisted: true}))")
        assert len(page.evaluate(SENT)) == 4
        wait_for(lambda: views("inv_seen")[1] == 2 and views("est_seen")[1] == 2,
                 timeout=20, what="the restored page's views")
        # A pageshow that is not a restore (the first load's) sends nothing.
        page.evaluate("() => window.dispatchEvent("
                      "new PageTransitionEvent('pageshow', {persisted: false}))")
        assert len(page.evaluate(SENT)) == 4

        # Run by a loader (no current script): the page's data-beacon tags are found.
        loaded = mint(relay, "inv_loaded")
        tag = f'<script type="text/plain" data-beacon="{loaded["beaconUrl"]}"></script>'
        src = invoice["script"].split('"')[1]
        loader = f"<script>fetch('{src}').then(r => r.text()).then(t => (0, eval)(t))</script>"
        page = context.new_page()
        page.goto(allowed.publish("/loader", [tag, loader], "inv_loaded"))

        def beacons():
            return [s["url"] for s in page.evaluate(SENT) if s["url"] != src]

        wait_for(beacons, timeout=20, what="the loader's script to send")
        assert beacons() == [loaded["beaconUrl"]]
        wait_for(lambda: views("inv_loaded") == (1, 1), timeout=20, what="the loader's view")

        # A page opened hidden sends nothing until it is shown; then once.
        hidden = mint(relay, "inv_hidden")
        page = context.new_page()
        page.add_init_script(HIDDEN)
        page.goto(allowed.publish("/hidden", [hidden["script"]], "inv_hidden"),
                  wait_until="load")
        assert page.evaluate("document.visibilityState") == "hidden"
        assert page.evaluate(SENT) == []  # the script ran (before "load") and waits
        assert views("inv_hidden") == (0, 0)
        page.evaluate("__show()")
        page.evaluate("__show()")  # a second change to visible: the same page view
        assert [s["url"] for s in page.evaluate(SENT)] == [hidden["beaconUrl"]]
        wait_for(lambda: views("inv_hidden") == (1, 1), timeout=20,
                 what="the hidden page's view once shown")
    finally:
        context.close()
        views.engine.dispose()


def test_the_fetch_fallback_and_cors_from_allowed_and_other_origins(
        start_relay, portals, browser, db_url):
    allowed, other = portals
    relay = start_relay(BEACON_ALLOWED_ORIGINS=allowed.url)
    views = Views(db_url)
    context = browser.new_context()
    context.add_init_script(NO_BEACON)  # a browser without sendBeacon: the script fetches
    context.add_init_script(RECORDER)
    try:
        # Allowed origin: one fetch, keepalive, no credentials; the answer is readable.
        minted = mint(relay, "inv_fetch")
        page = context.new_page()
        answers = []
        page.on("response", lambda r: answers.append(r) if "/v1/beacon/" in r.url else None)
        page.goto(allowed.publish("/fetch", [minted["script"]], "inv_fetch"), wait_until="load")
        [sent] = wait_for(lambda: [s for s in page.evaluate(SENT) if "status" in s],
                          timeout=20, what="the fetch's answer")
        assert (sent["via"], sent["url"], sent["status"]) == ("fetch", minted["beaconUrl"], 204)
        [answer] = answers  # what the browser received (JS cannot read these headers)
        headers = answer.all_headers()
        assert headers["access-control-allow-origin"] == allowed.url
        assert headers["vary"] == "Origin"  # a list, not *: the answer depends on Origin
        assert "access-control-allow-credentials" not in headers
        assert sent["init"] == ('{"method":"POST","keepalive":true,"mode":"cors",'
                                '"credentials":"omit"}')
        assert views("inv_fetch") == (1, 1)  # recorded before the 204 was sent
        # A fetch that needs a preflight (a JSON body) passes it from the allowed origin.
        net = Network(context, page)
        status = page.evaluate("""url => fetch(url, {method: "POST", mode: "cors",
            credentials: "omit", headers: {"Content-Type": "application/json"}, body: "{}"})
            .then(r => r.status)""", minted["beaconUrl"])
        assert status == 204 and views("inv_fetch")[1] == 2
        [preflight] = net.preflights_seen(page)
        assert preflight["status"] == 204
        assert {k: v for k, v in preflight["headers"].items()
                if k.startswith("Access-Control-") or k == "Vary"} == {
            "Access-Control-Allow-Origin": allowed.url, "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400",
            "Vary": "Origin"}

        # Another origin: the script's fetch fails in the browser and records nothing...
        refused = mint(relay, "inv_refused")
        page = context.new_page()
        net = Network(context, page)
        page.goto(other.publish("/fetch", [refused["script"]], "inv_refused"),
                  wait_until="load")
        [sent] = wait_for(lambda: [s for s in page.evaluate(SENT) if "status" in s],
                          timeout=20, what="the refused fetch to fail")
        assert (sent["url"], sent["status"]) == (refused["beaconUrl"], "failed")
        assert "Failed to fetch" in sent["error"]
        # ... and so does a preflighted one: the browser stops at the preflight.
        error = page.evaluate("""url => fetch(url, {method: "POST", mode: "cors",
            credentials: "omit", headers: {"Content-Type": "application/json"}, body: "{}"})
            .then(r => "answered " + r.status, e => String(e))""", refused["beaconUrl"])
        assert "Failed to fetch" in error
        [preflight] = net.preflights_seen(page)  # answered without Access-Control-Allow-Origin
        assert not [k for k in preflight["headers"] if k.startswith("Access-Control-")]
        assert ("OPTIONS", refused["beaconUrl"]) in net.requests
        assert views("inv_refused") == (0, 0)
    finally:
        context.close()
        views.engine.dispose()
