"""The per-app objects views and commands use, kept in ``app.extensions["service"]``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy.engine import Engine

from .oauth import OAuthClient
from .pixels import PixelSigner
from .store import Store
from .tokens import TokenVault
from .verdicts import Classifier


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Services:
    config: dict[str, Any]
    engine: Engine
    store: Store
    vault: TokenVault
    pixel_signer: PixelSigner
    classifier: Classifier
    oauth: OAuthClient | None = None  # None until HIGHLEVEL_CLIENT_ID/SECRET are set
    clock: Callable[[], dt.datetime] = utcnow


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["service"]
