"""Parsers for the environment's strings: marshmallow fields, one per kind of value."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

import marshmallow as ma


class CommaList(ma.fields.Field):
    """``a, b,,c`` -> ``["a", "b", "c"]``: parts are stripped and empty ones dropped."""

    def _deserialize(self, value, attr, data, **kwargs) -> list[str]:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return [part.strip() for part in value.split(",") if part.strip()]


class Choice(ma.fields.String):
    """One of a few words, compared case-insensitively and returned lower-case."""

    def __init__(self, *allowed: str) -> None:
        super().__init__(validate=ma.validate.OneOf(allowed))

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).strip().lower()


class Upper(ma.fields.String):
    """A string, upper-cased (``debug`` -> ``DEBUG``)."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).upper()


class Rate(ma.fields.Field):
    """``100/10s`` -> ``(100, 10.0)``: requests per interval, in ms, s (the default) or m."""

    default_error_messages = {"invalid": "expected N/<interval>, e.g. 100/10s"}
    _PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*")

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[int, float]:
        match = self._PATTERN.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise self.make_error("invalid")
        count, amount, unit = int(match[1]), float(match[2]), match[3] or "s"
        seconds = amount / 1000 if unit == "ms" else amount * 60 if unit == "m" else amount
        return count, seconds


class Listen(ma.fields.Field):
    """``[host:]port`` -> ``(host, port)``; without a host, every interface."""

    default_error_messages = {"invalid": "expected [host:]port, e.g. 9102 or 127.0.0.1:9102"}

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[str, int]:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        host, _, port = value.strip().rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise self.make_error("invalid")
        return host.strip("[]") or "0.0.0.0", int(port)


class BaseUrl(ma.fields.String):
    """An https URL without its trailing slash; plain http only for loopback (tests, demo)."""

    default_error_messages = {"insecure": "must be https (plain http only for loopback)"}

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise self.make_error("insecure")
        return value.rstrip("/")


class WebhookUrls(CommaList):
    """A comma list of http(s) URLs, each with a host; a repeated one counts once."""

    default_error_messages = {"url": "each entry must be an http:// or https:// URL with a host"}

    def _deserialize(self, value, attr, data, **kwargs) -> list[str]:
        urls = super()._deserialize(value, attr, data, **kwargs)
        for url in urls:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError for a port out of range
            except ValueError:
                raise self.make_error("url") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.make_error("url")
        return list(dict.fromkeys(urls))


class Origins(CommaList):
    """``*`` (any origin), or a comma list of web origins (``https://portal.example.com``,
    ``http://localhost:3000``), each normalised as browsers send ``Origin``: lower case,
    no default port, no path."""

    default_error_messages = {"origin": "must be * or comma-separated origins such as "
                                        "https://portal.example.com (scheme, host, port; "
                                        "no path)"}

    def _deserialize(self, value, attr, data, **kwargs) -> list[str]:
        entries = super()._deserialize(value, attr, data, **kwargs)
        if entries == ["*"]:
            return entries
        origins = []
        for entry in entries:
            try:
                parts = urlsplit(entry)
                port = parts.port
            except ValueError:
                raise self.make_error("origin") from None
            if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                    or parts.password is not None or parts.path not in ("", "/")
                    or parts.query or parts.fragment or entry.endswith(("?", "#"))):
                raise self.make_error("origin")
            default = {"http": 80, "https": 443}[parts.scheme]
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            origins.append(f"{parts.scheme}://{host}"
                           + (f":{port}" if port not in (None, default) else ""))
        if not origins:
            raise self.make_error("origin")
        return list(dict.fromkeys(origins))


class WebhookSecret(ma.fields.String):
    """A Standard Webhooks signing secret: ``whsec_`` then base64 of 24 to 64 random bytes
    (the size the specification asks for)."""

    default_error_messages = {"secret": "must be whsec_ followed by base64 of 24 to 64 bytes "
                                        "(`flask --app service keys generate` makes one)"}

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        encoded = value.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise self.make_error("secret") from None
        if not value.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise self.make_error("secret")
        return value


def normalize_database_url(url: str) -> str:
    """Accept the URL forms users paste and pick the psycopg 3 driver for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class DatabaseUrl(ma.fields.String):
    """A SQLAlchemy URL, with ``postgres://`` and ``postgresql://`` meaning psycopg 3."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return normalize_database_url(super()._deserialize(value, attr, data, **kwargs))


# The plain ones, short so that the inventory stays one line a setting.
Int, Float, Str = ma.fields.Integer, ma.fields.Float, ma.fields.String
