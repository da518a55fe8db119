"""What every signature scheme shares: the errors it raises and the timestamp checks."""

from __future__ import annotations

import base64
import binascii
import datetime as dt


class SignatureError(Exception):
    """Not signed by the source, or signed but stale or already used (401)."""


class TopicNotAllowedError(Exception):
    """An SNS message from a topic not listed in ``SES_TOPIC_ARNS`` (403)."""


class CertificateUnavailableError(Exception):
    """The SNS signing certificate cannot be had right now (503: SNS retries)."""


class MalformedMessageError(Exception):
    """The message lacks what its signature scheme needs (400)."""


def check_age(timestamp: float, now: dt.datetime, *, max_age: float,
              max_ahead: float) -> None:
    """Refuse a signature made more than ``max_age`` before or ``max_ahead`` after ``now``.

    :raises SignatureError: it is outside that window.
    """
    age = now.timestamp() - timestamp
    if age > max_age:
        raise SignatureError("The signature's timestamp is too old")
    if -age > max_ahead:
        raise SignatureError("The signature's timestamp is in the future")


def unix_seconds(value: object) -> float:
    """Read a Unix time (seconds) as sent in a header or a body.

    :raises SignatureError: it is not a number, or not a plausible time.
    """
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SignatureError("The signature's timestamp is not a Unix time") from None
    if seconds != seconds or abs(seconds) > 1e11:  # NaN, or beyond year 5000
        raise SignatureError("The signature's timestamp is not a Unix time")
    return seconds


def b64decode(value: str) -> bytes:
    """Decode a base64 signature strictly.

    :raises SignatureError: it is not valid base64.
    """
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("The signature is not valid base64") from None
