"""Pixel tokens and the tracking GIF; no Flask here.

A token is ``<kind>.<locationId>.<documentId>[.<expiry>].<signature>``: ids are
``[A-Za-z0-9_-]`` so ``.`` separates safely, and the whole token is URL-safe and
short (about 95 characters for two 24-character ids). It is signed with itsdangerous
(HMAC-SHA256); the first of ``PIXEL_SIGNING_KEYS`` signs and every key verifies,
so keys rotate without breaking emails already sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer

from ..ids import ID_RULE, is_valid_id

# The classic 43-byte transparent 1x1 GIF89a.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
       b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
GIF_HEADERS = {
    "Content-Type": "image/gif",
    "Content-Length": str(len(GIF)),
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Robots-Tag": "noindex",
}
KINDS = {"i": "invoice", "e": "estimate"}
_CODES = {kind: code for code, kind in KINDS.items()}
_SALT = "relay.pixel.v1"
MAX_TOKEN_LENGTH = 400


@dataclass(frozen=True)
class PixelTarget:
    kind: str  # invoice | estimate
    location_id: str
    document_id: str
    expires_at: dt.datetime | None = None


class PixelSigner:
    """Sign and verify pixel tokens with a rotating list of keys."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("PIXEL_SIGNING_KEYS is empty")
        # itsdangerous signs with the *last* key and verifies with all of them.
        self.signer = Signer(list(reversed(keys)), salt=_SALT, digest_method=hashlib.sha256)

    def sign(self, target: PixelTarget) -> str:
        """Return the URL-safe token for ``target``."""
        if not (is_valid_id(target.location_id) and is_valid_id(target.document_id)):
            raise ValueError(f"ids must be {ID_RULE}")
        parts = [_CODES[target.kind], target.location_id, target.document_id]
        if target.expires_at is not None:
            parts.append(_base36(int(target.expires_at.timestamp())))
        return self.signer.sign(".".join(parts)).decode()

    def verify(self, token: str, *, now: dt.datetime) -> PixelTarget | None:
        """Return the token's target, or None if it is forged, malformed or expired."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        try:
            payload = self.signer.unsign(token).decode()
        except BadSignature:
            return None
        parts = payload.split(".")
        if len(parts) not in (3, 4) or parts[0] not in KINDS:
            return None
        expires_at = None
        if len(parts) == 4:
            try:
                expires_at = dt.datetime.fromtimestamp(int(parts[3], 36), dt.UTC)
            except (ValueError, OverflowError, OSError):
                return None
            if expires_at <= now:
                return None
        return PixelTarget(KINDS[parts[0]], parts[1], parts[2], expires_at)


def pixel_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/v1/pixel/{token}.gif"


def img_tag(url: str) -> str:
    """A ready ``<img>`` for an email: 1x1, empty alt, hidden from layout."""
    return (f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0;opacity:0;overflow:hidden" />')


PREFETCH_HEADERS = {
    "Purpose": ("prefetch",),
    "Sec-Purpose": ("prefetch", "prerender"),
    "X-Purpose": ("preview",),
    "X-Moz": ("prefetch",),
}


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """True if the request says it is a prefetch or preview, not a view."""
    for name, values in PREFETCH_HEADERS.items():
        value = (headers.get(name) or "").lower()
        if value and any(v in value for v in values):
            return True
    return False


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if not number:
            return out
