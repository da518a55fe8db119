"""flask-smorest setup: ``/openapi.json`` and ``/docs`` from the same schemas the views use.

``/docs`` is Swagger UI served whole by the relay: its JS and CSS come from the pinned
``flask-swagger-ui`` wheel (its ``dist`` folder, Swagger UI's own release files) under
``/docs/assets/<version>/``, never from a CDN, so the page works on a network with no way
out. The version in the path lets browsers keep the files for a year: an upgrade changes it.
"""

from __future__ import annotations

import re
from copy import deepcopy
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from apispec import BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask import Flask, abort, send_from_directory
from flask_smorest import Api

from .auth import SECURITY_DESCRIPTION, SECURITY_SCHEME
from .errors import ForbiddenError, UnauthorizedError
from .schemas import ErrorSchema

SWAGGER_UI_PACKAGE = "flask-swagger-ui"
SWAGGER_UI_VERSION = version(SWAGGER_UI_PACKAGE)
# Only the files flask-smorest's swagger_ui.html loads; not the rest of ``dist`` (its
# oauth2-redirect page has had XSS fixes before, and the relay uses no OAuth in the UI).
SWAGGER_UI_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js",
                               "swagger-ui-standalone-preset.js"})
ASSETS_MAX_AGE = 365 * 24 * 3600
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def swagger_ui_dist() -> Path:
    """The folder of Swagger UI's release files inside the installed package (not imported:
    its blueprint is not used)."""
    spec = find_spec("flask_swagger_ui")
    assert spec is not None and spec.origin is not None, f"{SWAGGER_UI_PACKAGE} not installed"
    return Path(spec.origin).parent / "dist"


class RelayMarshmallowPlugin(MarshmallowPlugin):
    """apispec's plugin, plus a schema's ``OPENAPI_EXTRA``: the rules across fields that the
    schema's validators enforce and fields cannot say (``oneOf``, ``not``). Schemas named in
    it (``{"oneOf": ["InvoiceEventSchema", ...]}``) become references to their components."""

    def schema_helper(self, name, definition, schema=None, **kwargs):
        json_schema = super().schema_helper(name, definition, schema=schema, **kwargs)
        extra = getattr(resolve_schema_cls(schema), "OPENAPI_EXTRA", None) if schema else None
        if json_schema is None or not extra:
            return json_schema
        return {**json_schema, **self.resolver.resolve_schema_dict(deepcopy(extra))}


class ErrorResponsesPlugin(BasePlugin):
    """Every error answers the one error shape (errors.py), so the document says so: an
    error response declared with a description only gets the ``Error`` schema, and every
    operation that takes a key declares its 401 and its 403 (a key without the scope).
    Generated clients then parse each error into one typed model instead of leaving it
    untyped."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        for method, operation in (operations or {}).items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault("401", {"description": UnauthorizedError.message})
                responses.setdefault("403", {"description": ForbiddenError.description})
            for status, response in responses.items():
                # A string or a $ref names a response component (flask-smorest's have it).
                if str(status)[:1] in "45" and isinstance(response, dict) \
                        and "$ref" not in response and "content" not in response:
                    response["content"] = deepcopy(ERROR_CONTENT)


def camel(words: str) -> str:
    first, *rest = [w for w in re.split(r"[^0-9A-Za-z]+", words) if w]
    return first.lower() + "".join(w[:1].upper() + w[1:] for w in rest)


class OperationIdPlugin(BasePlugin):
    """Give every operation an ``operationId`` (what generated clients name their methods):
    the view function's name in camelCase (``post_events`` -> ``postEvents``), led by the
    method when one view documents several (``pixel`` -> ``getPixel``, ``headPixel``). An
    ``operationId`` given with ``@bp.doc(operationId=...)`` is kept. Two operations with one
    id stop the app at start, naming both: the fix is a rename or an explicit id."""

    def __init__(self):
        self.seen: dict[str, str] = {}  # operationId -> "METHOD /path"

    def operation_helper(self, path=None, operations=None, rule=None, **kwargs):
        if rule is None or not operations:
            return
        name = rule.endpoint.rpartition(".")[2]
        methods = [m for m in operations if m in HTTP_METHODS]
        for method in methods:
            operation = operations[method]
            if "operationId" not in operation:
                several = len(methods) > 1 and not name.startswith(f"{method}_")
                operation["operationId"] = camel(f"{method}_{name}" if several else name)
            where = f"{method.upper()} {path}"
            first = self.seen.setdefault(operation["operationId"], where)
            if first != where:
                raise ValueError(f"operationId {operation['operationId']!r} of {where} is "
                                 f"already {first}'s: set another with @bp.doc(operationId=)")


class RelayApi(Api):
    """flask-smorest's Api documenting our error shape (errors.py renders it)."""

    ERROR_SCHEMA = ErrorSchema


def init_api(app: Flask) -> Api:
    """Create the Api, its security schemes and the Swagger UI files' route."""
    assets_path = f"/docs/assets/{SWAGGER_UI_VERSION}/"
    app.config.update(
        API_TITLE="Invoice view relay",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=assets_path,
        # The online validator badge is Swagger UI's one call out: none on a private network.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
    )
    spec_kwargs: dict = {"marshmallow_plugin": RelayMarshmallowPlugin(),
                         "extra_plugins": [OperationIdPlugin(), ErrorResponsesPlugin()]}
    if app.config.get("PUBLIC_BASE_URL"):  # "Try it out" calls the relay where clients do
        spec_kwargs["servers"] = [{"url": app.config["PUBLIC_BASE_URL"].rstrip("/")}]
    api = RelayApi(app, spec_kwargs=spec_kwargs)
    # One bearer scheme; what a key may do is its scopes (OpenAPI 3.0 gives scopes only to
    # OAuth schemes, so each operation names its own in ``x-scopes``: auth.require_scope).
    api.spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "http", "scheme": "bearer", "description": SECURITY_DESCRIPTION})

    dist = swagger_ui_dist()

    def swagger_ui_asset(filename: str):
        if filename not in SWAGGER_UI_ASSETS:
            abort(404)
        response = send_from_directory(dist, filename, max_age=ASSETS_MAX_AGE)
        response.cache_control.immutable = True
        return response

    app.add_url_rule(f"{assets_path}<filename>", endpoint="swagger_ui_asset",
                     view_func=swagger_ui_asset)
    return api
