"""Screenshots of the console for docs/: ``docs/console-*.png``.

Fills a scratch SQLite store with a small install (``bench/console_data.py``'s ``fill``:
300 locations, about 30,000 events, every state represented), serves the app on 127.0.0.1
in a thread, signs in with Playwright driving Debian's Chromium (``/usr/bin/chromium``; no
browser download) and captures the overview (what needs attention, then its charts), the
locations waiting for a token, one such location, and a replay's dry run.

    .venv/bin/python scripts/console_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 860}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()

    import secrets

    from console_data import fill
    from cryptography.fernet import Fernet
    from playwright.sync_api import expect, sync_playwright
    from werkzeug.serving import make_server

    from service import create_app
    from service.store.engine import upgrade

    admin_key = "ak_demo_" + secrets.token_urlsafe(24)
    fernet_key = Fernet.generate_key().decode()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({
            "RELAY_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp}/demo.db",
            "INGEST_API_KEYS": ["ik_demo_" + secrets.token_urlsafe(24)],
            "ADMIN_API_KEYS": [admin_key], "PIXEL_SIGNING_KEYS": [secrets.token_urlsafe(32)],
            "TOKEN_ENCRYPTION_KEYS": [fernet_key],
            "SESSION_SECRET_KEYS": [secrets.token_urlsafe(32)], "LOG_LEVEL": "WARNING",
        })
        svc = app.extensions["service"]
        upgrade(svc.engine)
        filled = fill(svc.engine, locations=300, events=30_000, now=dt.datetime.now(dt.UTC),
                      token_key=fernet_key)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        no_token, dead = filled.states["no_token"][0], filled.states["dead"][0]
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_context(base_url=f"http://127.0.0.1:{server.server_port}",
                                           viewport=VIEWPORT).new_page()
                page.goto("/console/overview")
                page.get_by_label("Admin key").fill(admin_key)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("heading", name="Overview")).to_be_visible()
                shots = [("overview", "/console/overview"),
                         ("charts", "/console/overview#traffic-h"),
                         ("locations", "/console/locations?state=no_token"),
                         ("location", f"/console/locations/{no_token}"),
                         ("replay", f"/console/locations/{dead}/replay")]
                args.out.mkdir(parents=True, exist_ok=True)
                for name, path in shots:
                    page.goto(path)
                    target = args.out / f"console-{name}.png"
                    page.screenshot(path=target)
                    print(f"wrote {target}")
                browser.close()
        finally:
            server.shutdown()
            thread.join(timeout=5)
            svc.engine.dispose()


if __name__ == "__main__":
    main()
