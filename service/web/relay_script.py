"""The portal script: ``GET /v1/relay.js``, and the ``<script>`` tag that loads it.

``static/relay.js`` is a small script with no dependencies that a customer portal includes
with its beacon URL in a data attribute; it sends one view per page view, once the page is
visible (docs/api.md, "Portal script"). Its version is a hash of its content: a URL with
the current ``v`` is cached for a year (``immutable``), any other (none, or a version from
before an upgrade) for five minutes, so a portal that left the version out still picks up a
new script soon. Both carry the same ETag, and ``If-None-Match`` is answered 304.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

import marshmallow as ma
from flask import Response, request

from .bodies import Blueprint
from .schemas.common import QuerySchema

SCRIPT = (Path(__file__).parent / "static" / "relay.js").read_bytes()
VERSION = hashlib.sha256(SCRIPT).hexdigest()[:16]
ETAG = VERSION
IMMUTABLE_MAX_AGE = 365 * 24 * 3600
UNVERSIONED_MAX_AGE = 300

bp = Blueprint("relay_script", __name__, url_prefix="/v1",
               description="The portal script: one beacon per visible page view")


class RelayScriptQuerySchema(QuerySchema):
    v = ma.fields.String(validate=ma.validate.Length(max=64), metadata={
        "description": "the script's version (a hash of its content), as minted in "
                       "`script`; the current one is cached for a year"})


def script_url(base_url: str) -> str:
    """The versioned URL of the script on the relay at ``base_url``."""
    return f"{base_url.rstrip('/')}/v1/relay.js?v={VERSION}"


def script_tag(base_url: str, beacon_url: str) -> str:
    """A ready ``<script>`` tag for a portal page: the versioned script, this beacon."""
    src = html.escape(script_url(base_url), quote=True)
    return (f'<script src="{src}" data-beacon="{html.escape(beacon_url, quote=True)}" '
            f"async></script>")


@bp.route("/relay.js", methods=["GET"])
@bp.arguments(RelayScriptQuerySchema, location="query", as_kwargs=True)
@bp.doc(summary="The portal script", description=(
    "A small script with no dependencies: include it with "
    '`<script src=".../v1/relay.js?v=<version>" data-beacon="<beaconUrl>" async></script>` '
    "(the `script` that `POST /v1/pixel-urls` answers). It posts the beacon once per page "
    "view, once the page is visible, with navigator.sendBeacon, else fetch with keepalive. "
    "The current version is cached for a year, any other for five minutes; ETag and 304."),
    responses={"200": {"description": "the script", "content": {
                           "text/javascript": {"schema": {"type": "string"}}}},
               "304": {"description": "not modified (If-None-Match)"}})
def relay_js(v: str | None = None):
    current = v == VERSION
    response = Response(SCRIPT, mimetype="text/javascript")
    response.set_etag(ETAG)
    response.cache_control.public = True
    response.cache_control.max_age = IMMUTABLE_MAX_AGE if current else UNVERSIONED_MAX_AGE
    response.cache_control.immutable = current
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Access-Control-Allow-Origin"] = "*"  # public; lets SRI / crossorigin work
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    if request.if_none_match.contains_weak(ETAG):
        response.status_code = 304
        response.set_data(b"")
    return response
