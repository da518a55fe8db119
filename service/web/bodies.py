"""Request bodies: every JSON body a view reads is parsed by ``safejson.loads``.

Two readers parse request JSON, and both come here: Flask's ``request.get_json`` (it parses
with the app's JSON provider, ``JSONProvider``) and flask-smorest's ``@bp.arguments`` (its
webargs parser reads the body through ``request.get_json``: parsed once, and cached). A
body that is not JSON, or is nested too deep, is a 400 in DESIGN.md's shape and one log
line. The email sources and HighLevel's webhooks parse their raw bodies with
``safejson.loads`` themselves, after checking what can be checked on the raw bytes.
"""

from __future__ import annotations

import logging
from typing import Any

import flask
import flask_smorest
from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser

from .. import safejson
from .errors import ServiceError

logger = logging.getLogger(__name__)


class InvalidJSONError(ServiceError):
    status = 400
    message = "The body is not valid JSON"


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, loading with ``safejson`` (``request.get_json`` parses with ``app.json``)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return safejson.loads(s)


class Request(flask.Request):
    """Flask's request, answering a body that is not JSON 400 (one log line, no traceback)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:  # not declared JSON: Flask's 415
            return super().on_json_loading_failed(e)
        reason = getattr(e, "reason", "malformed")
        logger.info("request.invalid_json", extra={"reason": reason, "endpoint": self.endpoint})
        raise InvalidJSONError(str(e) if isinstance(e, safejson.JSONError) else None)


class ArgumentsParser(FlaskParser):
    """webargs' parser, reading a JSON body with ``request.get_json`` (so with ``safejson``).

    A query string is loaded with its schema's own ``unknown`` (webargs would exclude
    unknown parameters): ``schemas.QuerySchema`` raises, so ``?status=invalid`` on a route
    that has no ``status`` is a 422 naming it, on every route at once, not a filter
    silently ignored.
    """

    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
                                   "query": None, "querystring": None}

    def load_json(self, req: flask.Request, schema) -> Any:
        # As webargs does: no JSON content type, or no body at all, is "no JSON given".
        if not core.is_json(req.mimetype) or not req.get_data(cache=True):
            return core.missing
        return req.get_json(force=True)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with ``ArgumentsParser``: use it for every API blueprint."""

    ARGUMENTS_PARSER = ArgumentsParser()


def init_app(app: flask.Flask) -> None:
    """Parse the app's request bodies with ``safejson``; a failure is a 400."""
    app.json = JSONProvider(app)
    app.request_class = Request
