"""What the console's tests share: reading a page's CSRF token, signing a test client in."""

from __future__ import annotations

import html
import re

from .conftest import ADMIN_KEY

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(page: str) -> str:
    """The CSRF token of the first form on ``page`` (an HTML text)."""
    match = CSRF_FIELD.search(page)
    assert match, "no CSRF token on the page"
    return html.unescape(match[1])


def sign_in(client, key: str = ADMIN_KEY, *, next_path: str = "") -> object:
    """Sign ``client`` in through the form, as a person does; return the POST's response."""
    form = client.get("/console/signin")
    assert form.status_code == 200, form.text
    return client.post("/console/signin", data={
        "csrf_token": csrf_token(form.text), "key": key, "next": next_path})


def post_form(client, page_path: str, action: str, **fields: str):
    """POST ``fields`` to ``action`` with the CSRF token of the page at ``page_path``."""
    page = client.get(page_path)
    assert page.status_code == 200, page.text
    return client.post(action, data={"csrf_token": csrf_token(page.text), **fields})


def text(page: str) -> str:
    """A page's text without its tags, whitespace collapsed: what a person reads."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
