"""What every resource's schemas share: field types, text rules, the error shape, and
``QuerySchema``, the base of every query string's schema."""

from __future__ import annotations

import datetime as dt

import marshmallow as ma

from ...ids import FullMatch

MAX_BIGINT = 2**63 - 1

# Tokens go into an HTTP header: printable ASCII, no spaces or line breaks.
Printable = FullMatch(r"^[\x21-\x7e]+$",
                      error="Must be printable ASCII without spaces or line breaks.")


# Free text that either store can hold: PostgreSQL refuses NUL in text, and a lone surrogate
# (JSON can carry "\ud800") is not UTF-8 for either store: both failed as a 500.
NoNul = FullMatch(r"^[^\x00]*$", error="Must not contain NUL characters.")


def _encodable(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ma.ValidationError("Must be valid Unicode text.") from None


Text = [NoNul, _encodable]
# One line of it (a name): no control characters either, NUL among them.
OneLine = [FullMatch(r"^[^\x00-\x1f\x7f]*$", error="Must be one line of text."), _encodable]


class UTCDateTime(ma.fields.AwareDateTime):
    """An ISO 8601 time (taken as UTC when it has no offset), loaded as UTC. A time that does
    not exist in UTC (0001-01-01T00:00:00+05:00 falls in year 0) is invalid, not a 500."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=dt.UTC, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> dt.datetime:
        loaded = super()._deserialize(value, attr, data, **kwargs)
        try:
            return loaded.astimezone(dt.UTC)
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class QuerySchema(ma.Schema):
    """A query string's parameters. Unknown ones are refused (422, naming them): the
    API's blueprints read query strings with each schema's own ``unknown``, which is
    ``RAISE`` here (``bodies.ArgumentsParser``), so a misspelt filter never silently
    widens a list."""

    class Meta:
        unknown = ma.RAISE


class ErrorSchema(ma.Schema):
    """Every error's body (errors.py renders it): ``errors`` holds field errors, if any."""

    statusCode = ma.fields.Integer(required=True)
    message = ma.fields.String(required=True)
    errors = ma.fields.Dict()
