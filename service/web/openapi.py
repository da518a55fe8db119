"""flask-smorest setup: ``/openapi.json`` and ``/docs`` from the same schemas the views use."""

from __future__ import annotations

from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask import Flask
from flask_smorest import Api

from .schemas import ErrorSchema


class RelayMarshmallowPlugin(MarshmallowPlugin):
    """apispec's plugin, plus a schema's ``OPENAPI_EXTRA``: the rules across fields that the
    schema's validators enforce and fields cannot say (``oneOf``, ``not``)."""

    def schema_helper(self, name, definition, schema=None, **kwargs):
        json_schema = super().schema_helper(name, definition, schema=schema, **kwargs)
        extra = getattr(resolve_schema_cls(schema), "OPENAPI_EXTRA", None) if schema else None
        return {**json_schema, **extra} if json_schema is not None and extra else json_schema


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
    api = RelayApi(app, spec_kwargs={"marshmallow_plugin": RelayMarshmallowPlugin()})
    for name, what in (("ingestKey", "an INGEST_API_KEYS key"),
                       ("adminKey", "an ADMIN_API_KEYS key")):
        api.spec.components.security_scheme(
            name, {"type": "http", "scheme": "bearer", "description": f"Bearer {what}"})
    return api
