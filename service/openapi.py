"""flask-smorest setup: ``/openapi.json`` and ``/docs`` from the same schemas the views use."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from .schemas import ErrorSchema


class RelayApi(Api):
    """flask-smorest's Api documenting our error shape (errors.py renders it)."""

    ERROR_SCHEMA = ErrorSchema


def init_api(app: Flask) -> Api:
    """Create the Api and its security schemes."""
    app.config.update(
        API_TITLE="Invoice view relay",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/",
    )
    api = RelayApi(app)
    for name, what in (("ingestKey", "an INGEST_API_KEYS key"),
                       ("adminKey", "an ADMIN_API_KEYS key")):
        api.spec.components.security_scheme(
            name, {"type": "http", "scheme": "bearer", "description": f"Bearer {what}"})
    return api
