"""Our exceptions, and the one JSON error shape: ``{"statusCode", "message", "errors"}``."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import Flask, jsonify
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, InternalServerError

from ..forward.token_rules import UnrefreshableTokenError
from ..store.viewrows import IdempotencyConflict

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Root of the errors our views raise. A subclass names one failure by its class
    attributes: ``status`` (the HTTP status), a default ``message`` and ``headers``."""

    status = 400
    message = "Bad request"
    headers: dict[str, str] = {}

    def __init__(self, message: str | None = None, *, errors: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.errors = errors
        self.headers = {**self.headers, **(headers or {})}


class UnauthorizedError(ServiceError):
    status = 401
    message = "Missing or invalid API key"
    headers = {"WWW-Authenticate": 'Bearer realm="relay"'}


class ForbiddenError(ServiceError):
    """A valid key that may not do this: the message names the scope (or location) it
    lacks."""

    status = 403
    message = "This key may not do that"
    # What the OpenAPI document says of every keyed route's 403.
    description = "The key is valid but lacks the scope (or the location) this route needs"


class NotFoundError(ServiceError):
    status = 404
    message = "Not found"


class StoreUnavailableError(ServiceError):
    status = 503
    message = "The store is unavailable; retry later"
    headers = {"Retry-After": "5"}


def error_response(status: int, message: str, errors: dict | None = None,
                   headers: dict | None = None):
    """Build the JSON error response every handler returns."""
    body = {"statusCode": status, "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def handle_http_exception(error: HTTPException):
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    where = "request"
    if isinstance(errors, dict) and set(errors) <= {"json", "query", "headers", "view_args"}:
        # webargs nests field errors under the location: name it, flatten the fields.
        where = {"json": "request body", "query": "query string"}.get(
            next(iter(errors)), "request") if len(errors) == 1 else "request"
        errors = {k: v for loc in errors.values() for k, v in loc.items()} \
            if all(isinstance(v, dict) for v in errors.values()) else errors
    message = data.get("message") or error.description or error.name
    if error.code == 422 and not data.get("message"):
        message = f"The {where} is not valid"
        if where == "query string" and isinstance(errors, dict):
            message += ": " + ", ".join(sorted(map(str, errors)))  # name the parameters
    elif error.code == 400 and isinstance(errors, dict) and "json" in errors:
        message, errors = "The body is not valid JSON", None
    headers = dict(data.get("headers") or {})
    if error.code == 405 and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(error.code or 500, message, errors, headers)


def handle_service_error(error: ServiceError):
    return error_response(error.status, error.message, error.errors, error.headers)


def handle_validation_error(error: ma.ValidationError):
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return error_response(422, "The request body is not valid", messages)


def handle_idempotency_conflict(error: Exception):
    return error_response(409, str(error), {"eventId": ["Already used for another document."]})


def handle_unrefreshable_token(error: Exception):
    return error_response(422, str(error), {"refreshToken": [str(error)]})


def handle_store_down(error: Exception):
    logger.error("store.unavailable", extra={"error": type(error).__name__})
    return handle_service_error(StoreUnavailableError())


def handle_unexpected(error: Exception):
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    logger.exception("request.unhandled")
    return handle_http_exception(InternalServerError())


def init_app(app: Flask) -> None:
    """Register the handlers (after flask-smorest's, so ours win)."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(ma.ValidationError, handle_validation_error)
    app.register_error_handler(IdempotencyConflict, handle_idempotency_conflict)
    app.register_error_handler(UnrefreshableTokenError, handle_unrefreshable_token)
    app.register_error_handler(OperationalError, handle_store_down)
    app.register_error_handler(PoolTimeout, handle_store_down)
    app.register_error_handler(Exception, handle_unexpected)
