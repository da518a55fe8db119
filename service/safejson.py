"""JSON from outside, parsed in one place: anything unreadable is one ``ValueError``. No Flask.

``json.loads`` recurses once per level of nesting, so a body of 5,000 ``[`` raises
``RecursionError``, which is not a ``ValueError``: every ``except ValueError`` around a parse
let it through as a 500 with a traceback (and on the email sources, before any signature was
checked). ``loads`` turns it into a ``ValueError``, and refuses documents nested deeper than
``MAX_DEPTH`` even when Python could parse them, so no later step (validation, logging a
value) meets a structure deep enough to recurse out of the stack. Every payload the service
reads goes through here: request bodies (service/bodies.py), the email providers' webhooks
and the SNS message inside them (service/sources.py), HighLevel's app webhooks.
"""

from __future__ import annotations

import json
from typing import Any

# Far deeper than any payload the service takes (events, provider webhooks: 5 levels or so).
MAX_DEPTH = 64


class JSONError(ValueError):
    """Not UTF-8 JSON, or nested deeper than ``MAX_DEPTH``; ``reason`` is a stable log label."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 when bytes; a byte order mark is ignored, as RFC 8259 allows).

    :raises JSONError: it is not UTF-8 JSON (``reason`` ``malformed``), or it is nested more
        than ``MAX_DEPTH`` levels (``too_deep``).
    """
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes | bytearray) else data
        value = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise JSONError("The body is not valid JSON", reason="malformed") from None
    if _deeper_than(value, MAX_DEPTH):
        raise _too_deep()
    return value


def _too_deep() -> JSONError:
    return JSONError(f"The body is nested more than {MAX_DEPTH} levels deep", reason="too_deep")


def _deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects and arrays more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, dict | list))
    return False
