"""Structured logging: one stdout handler, JSON in production, text in development.

Messages are stable event names (``delivery.attempt``); fields travel in ``extra``.
Every record gets the current request id (a Flask request's, or none).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Add ``request_id`` from the Flask request context, when there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = None
            from flask import g, has_request_context

            if has_request_context():
                record.request_id = g.get("request_id")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items()
                    if k not in _STANDARD and v is not None})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-friendly: ``time level logger event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items()
                          if k not in _STANDARD and v is not None)
        line = (f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} "
                f"{record.name} {record.getMessage()} {fields}").rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def logging_config(level: str = "INFO", fmt: str = "text") -> dict:
    """The ``dictConfig`` for the service (gunicorn's config reuses it)."""
    formatter = "service.logging.JsonFormatter" if fmt == "json" else \
        "service.logging.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "service.logging.RequestIdFilter"}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                "formatter": "default", "filters": ["request_id"]}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {"urllib3": {"level": "WARNING"}, "alembic": {"level": "WARNING"}},
    }


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install the service's logging config (idempotent)."""
    logging.config.dictConfig(logging_config(level, fmt))
