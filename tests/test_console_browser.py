"""The console in a real browser: Playwright driving Debian's Chromium against real processes.

The relay runs as in production (gunicorn, a forwarder, ``flask db upgrade``: the
``start_relay`` fixture) against the fake HighLevel. An operator signs in with the keyboard
alone, finds the location whose views wait for a token, stores its token from the console
and watches its views go out, replays a dead letter after the dry run said how many, and
signs out; a forged CSRF token and a signed-out request are refused. Every input on every
page visited has a label (inputs are found by their label or role, as a person finds
them). Screenshots of the flow go to ``tmp_path`` (``scripts/console_screenshots.py`` makes
the ones in docs/).

Playwright's own browser download is never used: the ``browser`` fixture (conftest.py)
launches Debian's ``/usr/bin/chromium`` through ``executable_path`` (CI installs it, see
.ci/run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .processes import (
    ADMIN_KEY,
    HL_TOKEN,
    LOCATION,
    PARKED,
    PARKED_TOKEN,
    assert_no_secret_logged,
    patches_for,
    wait_for,
)

pytestmark = pytest.mark.e2e

DEAD_DOC = "inv_dead"
PARKED_DOCS = ("inv_parked_1", "inv_parked_2")
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.name)"""


def labelled(page: Page) -> None:
    """Every field a person can fill on this page has a label."""
    assert page.evaluate(UNLABELLED) == [], page.url


def shot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=folder / f"console-{name}.png", full_page=True)


def make_stuck_views(relay, fake) -> dict:
    """Views waiting for a token at PARKED, and one dead letter at LOCATION."""
    relay.store_token(LOCATION, HL_TOKEN)
    fake.script(404, document_id=DEAD_DOC)  # HighLevel: "Invoice not found", once
    dead = relay.post_events({"locationId": LOCATION, "invoiceId": DEAD_DOC})
    parked = [relay.post_events({"locationId": PARKED, "invoiceId": doc}) for doc in PARKED_DOCS]
    wait_for(lambda: relay.event(dead["id"])["status"] == "failed", timeout=20,
             what="the dead letter")
    wait_for(lambda: all(relay.event(p["id"]).get("reason") == "blocked" for p in parked),
             timeout=20, what="the views without a token to be parked")
    return {"dead": dead["id"], "parked": [p["id"] for p in parked]}


def test_an_operator_finds_fixes_and_replays_from_the_console(start_relay, fake, browser,
                                                              tmp_path):
    relay = start_relay()
    stuck = make_stuck_views(relay, fake)
    context = browser.new_context(base_url=relay.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()

    # Signed out, the console sends a person to sign in; the keyboard alone signs in.
    page.goto("/console/overview")
    expect(page).to_have_url(re.compile(r"/console/signin\?next=/console/overview$"))
    labelled(page)
    expect(page.get_by_label("Admin key")).to_be_focused()  # autofocus
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/overview$"))
    assert ADMIN_KEY not in page.url and ADMIN_KEY not in page.content()
    [cookie] = [c for c in context.cookies() if c["name"] == "relay_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["secure"]
    expect(page.get_by_role("heading", name="Needs attention")).to_be_visible()
    page.keyboard.press("Tab")  # the first stop on every page skips the navigation
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/overview#main$"))
    shot(page, tmp_path, "overview")

    # The location without a token, found by its state.
    page.get_by_role("link", name="Locations").click()
    page.get_by_label("State").select_option("no_token")
    page.get_by_role("button", name="Show").click()
    labelled(page)
    row = page.get_by_role("row").filter(has_text=PARKED)
    expect(row).to_contain_text("no token: 2 views waiting")
    shot(page, tmp_path, "locations")
    row.get_by_role("link", name=PARKED).click()

    # Store its token; its parked views go out while the operator watches.
    labelled(page)
    page.get_by_label("Private Integration Token", exact=True).fill(PARKED_TOKEN)
    page.get_by_role("button", name="Store token").click()
    expect(page.get_by_role("status")).to_contain_text("Token stored.")
    assert PARKED_TOKEN not in page.content()

    def delivered_here() -> bool:
        page.reload()
        return page.locator("#delivered-views").inner_text() == "2"

    wait_for(delivered_here, timeout=20, interval=0.5, what="the parked views to go out")
    expect(page.locator("#waiting-views")).to_have_text("0")
    # The newest attempt first: delivered, after the "no token" one that parked it.
    attempts = page.get_by_role("row").filter(has_text=PARKED_DOCS[0])
    expect(attempts.first).to_contain_text("delivered")
    expect(attempts.last).to_contain_text("no token")
    assert {r.token for d in PARKED_DOCS for r in patches_for(fake, d)} == {PARKED_TOKEN}
    shot(page, tmp_path, "location")

    # The dead letter: the dry run says how many, then the replay sends it again.
    page.goto(f"/console/locations/{LOCATION}")
    expect(page.get_by_role("row").filter(has_text=DEAD_DOC).first).to_contain_text(
        "Invoice not found")
    page.get_by_role("link", name="Replay dead letters…").click()
    expect(page.locator("#replay-count")).to_contain_text("would re-queue 1 dead document")
    assert relay.event(stuck["dead"])["status"] == "failed"  # the dry run changed nothing
    shot(page, tmp_path, "replay")
    page.get_by_role("button", name="Replay 1 document(s)").click()
    expect(page.get_by_role("status")).to_contain_text("1 dead document(s) re-queued.")
    relay.wait_delivered(stuck["dead"])

    # A forged CSRF token is refused, and nothing changes.
    page.goto(f"/console/locations/{PARKED}")
    page.locator("form[action$='/unblock'] input[name=csrf_token]").evaluate(
        "e => e.value = 'forged'")
    page.get_by_role("button", name="Send parked views again").click()
    expect(page.get_by_role("heading", name="Form refused")).to_be_visible()
    assert page.get_by_role("alert").inner_text().find("Nothing was changed") >= 0

    # Sign out: pages send the browser to sign in again, and a form is refused.
    page.goto(f"/console/locations/{PARKED}")
    token = page.locator("form[action$='/unblock'] input[name=csrf_token]").input_value()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("You are signed out.")
    page.goto("/console/overview")
    expect(page).to_have_url(re.compile(r"/console/signin"))
    refused = page.request.post(f"/console/locations/{PARKED}/unblock",
                                form={"csrf_token": token}, max_redirects=0)
    assert refused.status == 401
    assert "not signed in" in refused.text()
    context.close()

    assert len(list(tmp_path.glob("console-*.png"))) == 4
    assert_no_secret_logged(relay.web, relay.forwarder)
