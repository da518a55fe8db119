"""The id rule, defined once: 1-64 characters of ``A-Z a-z 0-9 _ -``.

Every id the service accepts (locations, invoices, estimates, companies, idempotency keys)
is checked here, over the whole string. Python's ``$`` also matches before a final newline,
so ``re.match(r"^...$", "LOC\\n")`` succeeds: ids are always checked with ``fullmatch``.
``ID_PATTERN`` keeps its anchors because the OpenAPI document states it, and JSON Schema's
(ECMA 262) ``$`` matches only at the very end.
"""

from __future__ import annotations

import re

import marshmallow as ma

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ID_RULE = "1-64 characters of A-Z a-z 0-9 _ -"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True if ``value`` is a string that is an id, all of it."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


class FullMatch(ma.validate.Regexp):
    """``validate.Regexp`` that matches the whole value (marshmallow's uses ``re.match``).

    Still a ``Regexp``, so apispec documents its pattern.
    """

    def __call__(self, value):
        if not isinstance(value, str) or self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


# The marshmallow validator of every id field.
Id = FullMatch(ID_PATTERN, error=f"Must be {ID_RULE}.")
