"""``/``: a small page pointing to the console, the API's docs and the health checks."""

from __future__ import annotations

from flask import Blueprint, render_template

from . import CONTENT_SECURITY_POLICY

bp = Blueprint("landing", __name__)


@bp.get("/")
def index():
    """Where to go from the relay's root."""
    return render_template("console/landing.html"), 200, {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}
