"""Validate requests against HighLevel's own OpenAPI documents (used by tests/fake_highlevel.py).

The documents live outside the project, at ``<project_root>/../shared/highlevel-openapi``
(``apps/invoices.json`` and ``apps/oauth.json``, both ref ``../common/common-schemas.json``);
they are never copied in. A request is checked against the document for its path: ``/oauth/...``
against oauth.json (form bodies, ``application/x-www-form-urlencoded``), the rest against
invoices.json. When that folder is absent, ``SPEC_AVAILABLE`` is False and nothing here should
be called.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from openapi_core.exceptions import OpenAPIError
from werkzeug.wrappers import Request

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = PROJECT_ROOT.parent / "shared" / "highlevel-openapi"
SPEC_FILES = {  # document name -> file
    "invoices": SPEC_DIR / "apps" / "invoices.json",
    "oauth": SPEC_DIR / "apps" / "oauth.json",
}
SPEC_FILE = SPEC_FILES["invoices"]
OAUTH_SPEC_FILE = SPEC_FILES["oauth"]
SPEC_AVAILABLE = all(f.is_file() for f in SPEC_FILES.values()) and (
    SPEC_DIR / "common" / "common-schemas.json"
).is_file()
SERVER_URL = "https://services.leadconnectorhq.com"  # the only server the documents name
NOT_FOUND_ERRORS = ("ServerNotFound", "PathNotFound", "OperationNotFound")
AUTH_ERRORS = ("SecurityValidationError",)


@cache
def load_openapi(name: str = "invoices") -> OpenAPI:
    """Load one document once. ``from_file_path`` uses the file's URI as base, so the relative
    ``$ref`` to ../common resolves. The documents aren't strictly valid OpenAPI 3.0, hence no
    spec validator."""
    return OpenAPI.from_file_path(str(SPEC_FILES[name]), config=Config(spec_validator_cls=None))


def load_openapis() -> None:
    """Load every document now (so the first request isn't slow)."""
    for name in SPEC_FILES:
        load_openapi(name)


def document_for(path: str) -> str:
    """The name of the document that describes ``path``."""
    return "oauth" if path.startswith("/oauth/") else "invoices"


class AtHighLevel(WerkzeugOpenAPIRequest):
    """The request as if addressed to SERVER_URL: same path, query, headers and body.

    openapi-core matches the full URL against the document's ``servers``, so validating the
    loopback URL as-is fails with ServerNotFound."""

    @property
    def host_url(self) -> str:
        return SERVER_URL + "/"


def openapi_violation(request: Request) -> tuple[str, str] | None:
    """None when ``request`` is valid, otherwise (openapi-core error class name, description).

    Form bodies: openapi-core parses ``application/x-www-form-urlencoded`` itself (every value
    a string, the first of repeated fields) from the cached body, then checks the schema."""
    request.get_data(cache=True)  # openapi-core reads the body more than once
    try:
        load_openapi(document_for(request.path)).validate_request(AtHighLevel(request))
    except OpenAPIError as exc:
        text, cause = str(exc), exc.__cause__
        errors = getattr(cause, "schema_errors", None)
        if errors:  # str(exc) embeds the cause's repr-heavy text: keep just the messages
            text = text.replace(str(cause), "").rstrip(": ")
            text += ": " + "; ".join(e.message for e in errors)
        elif cause is not None and str(cause) not in text:
            text += f": {cause}"
        return type(exc).__name__, text
    return None
