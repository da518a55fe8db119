"""Location pixels: a signed prefix per location and kind, any document id after it.

An email sent by a system that can only substitute an id into a template (HighLevel's
own email templates, an ESP's variables) cannot carry a per-document pixel token. A
location that opts in gets a prefix instead::

    {PUBLIC_BASE_URL}/v1/pixel/l/<prefix>/<documentId>.gif

The prefix is ``<kind code>.<locationId>.<prefix id>.<signature>``, signed like pixel
tokens (itsdangerous, HMAC-SHA256, the first of ``PIXEL_SIGNING_KEYS`` signs and every
key verifies) under a salt of its own, so a prefix is never a valid pixel token and a
token never a valid prefix. Its URLs record a view only while its row (``store/prefixes``)
is not revoked: each web process asks the store again at most every ``RECHECK`` (a
revocation reaches every process within that, with no restart). No Flask here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer
from sqlalchemy.engine import Engine

from ..ids import ID_RULE, is_valid_id
from ..store.prefixes import PixelPrefix, active_prefix
from .pixels import KINDS, MAX_TOKEN_LENGTH, PixelTarget

_CODES = {kind: code for code, kind in KINDS.items()}
_SALT = "relay.pixel-prefix.v1"  # not the pixel tokens' salt: neither passes for the other
ROUTE = "/v1/pixel/l/"  # then <prefix>/<documentId>.gif; a pixel token never has a "/"
SOURCE = "location-pixel"  # the views' source (a signed pixel's is "pixel")
RECHECK = dt.timedelta(seconds=2)  # how long a process trusts what the store said
# Merge fields shown in the example <img> (HighLevel's style; other systems have their own).
PLACEHOLDERS = {"invoice": "{{invoice.id}}", "estimate": "{{estimate.id}}"}


@dataclass(frozen=True)
class PrefixClaim:
    """What a signed prefix says: which row, which location, which kind."""

    prefix_id: str
    location_id: str
    kind: str


class PrefixSigner:
    """Sign and verify location prefixes with a rotating list of keys."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("PIXEL_SIGNING_KEYS is empty")
        # itsdangerous signs with the *last* key and verifies with all of them.
        self.signer = Signer(list(reversed(keys)), salt=_SALT, digest_method=hashlib.sha256)

    def sign(self, claim: PrefixClaim) -> str:
        """Return the URL-safe prefix for ``claim``."""
        if not (is_valid_id(claim.location_id) and is_valid_id(claim.prefix_id)):
            raise ValueError(f"ids must be {ID_RULE}")
        return self.signer.sign(
            f"{_CODES[claim.kind]}.{claim.location_id}.{claim.prefix_id}").decode()

    def verify(self, prefix: str) -> PrefixClaim | None:
        """Return what ``prefix`` says, or None if it is forged or malformed."""
        if not prefix or len(prefix) > MAX_TOKEN_LENGTH or not prefix.isascii():
            return None
        try:
            payload = self.signer.unsign(prefix).decode()
        except BadSignature:
            return None
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] not in KINDS:
            return None
        return PrefixClaim(parts[2], parts[1], KINDS[parts[0]])


class LocationPixels:
    """Prefixes made from their rows, and pixel paths under them resolved to a document.

    Keeps, per process, what the store last said of each prefix for ``RECHECK`` (a bounded
    map, emptied when full): one read per prefix every two seconds, not one per view.
    """

    def __init__(self, keys: list[str], engine: Engine, *, limit: int = 10_000):
        self.signer = PrefixSigner(keys)
        self.engine = engine
        self.limit = limit
        self._seen: dict[str, tuple[dt.datetime, PixelPrefix | None]] = {}
        self._lock = threading.Lock()

    def prefix_for(self, row: PixelPrefix) -> str:
        """The signed prefix of ``row``."""
        return self.signer.sign(PrefixClaim(row.id, row.location_id, row.kind))

    def resolve(self, path: str, *, now: dt.datetime) -> PixelTarget | None:
        """The document ``<prefix>/<documentId>`` (a pixel path after ``ROUTE``) names, if
        the prefix is genuine and not revoked and the id follows the id rule; else None."""
        prefix, _, document_id = path.partition("/")
        if not is_valid_id(document_id):
            return None
        claim = self.signer.verify(prefix)
        if claim is None:
            return None
        row = self._active(claim.prefix_id, now=now)
        if row is None or (row.location_id, row.kind) != (claim.location_id, claim.kind):
            return None
        return PixelTarget(claim.kind, claim.location_id, document_id)

    def forget(self, prefix_id: str) -> None:
        """Drop what this process remembers of ``prefix_id`` (it was just revoked here)."""
        with self._lock:
            self._seen.pop(prefix_id, None)

    def _active(self, prefix_id: str, *, now: dt.datetime) -> PixelPrefix | None:
        with self._lock:
            seen = self._seen.get(prefix_id)
        # A clock that went back also asks again.
        if seen is not None and seen[0] <= now < seen[0] + RECHECK:
            return seen[1]
        row = active_prefix(self.engine, prefix_id)
        with self._lock:
            if len(self._seen) >= self.limit:
                self._seen.clear()
            self._seen[prefix_id] = (now, row)
        return row
