"""Invoice view relay: tells HighLevel when a customer has viewed an invoice or estimate."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config, logging, services, web, CLI. ``config`` overrides the
    environment."""
    from . import cli, web
    from .config import load_config
    from .logging import configure_logging
    from .wiring import build_services

    app = Flask(__name__, instance_relative_config=True)
    settings = load_config(os.environ, config, instance_path=app.instance_path)
    configure_logging(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    app.config.update(settings)
    app.extensions["service"] = build_services(settings)
    web.init_app(app)
    cli.init_app(app)
    return app
