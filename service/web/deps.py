"""The per-app objects views and commands use (``wiring.Services``), kept in
``app.extensions["service"]``."""

from __future__ import annotations

from flask import current_app

from ..wiring import Services


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["service"]
