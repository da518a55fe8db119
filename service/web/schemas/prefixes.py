"""Location pixel prefixes: ``/v1/locations/<locationId>/pixel-prefixes``."""

from __future__ import annotations

import marshmallow as ma

from ...store.prefixes import PREFIX_KINDS
from .common import Text


class PixelPrefixRequestSchema(ma.Schema):
    """What to mint a prefix for: one kind of document of the path's location."""

    class Meta:
        unknown = ma.RAISE

    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(PREFIX_KINDS))
    name = ma.fields.String(validate=[ma.validate.Length(min=1, max=100), *Text], metadata={
        "description": "a label for people: which template or sender it is for"})


class PixelPrefixSchema(ma.Schema):
    """A prefix as listed: never the signed prefix itself (its id is the part of its URLs
    that names it, after the location id)."""

    id = ma.fields.String()
    kind = ma.fields.String()
    name = ma.fields.String(allow_none=True)
    createdAt = ma.fields.AwareDateTime()
    revokedAt = ma.fields.AwareDateTime(allow_none=True)


class PixelPrefixListSchema(ma.Schema):
    prefixes = ma.fields.List(ma.fields.Nested(PixelPrefixSchema))


class MintedPixelPrefixSchema(PixelPrefixSchema):
    """A prefix just minted: the only answer that shows its URLs."""

    urlTemplate = ma.fields.String(metadata={
        "description": "the pixel URL with {documentId} to fill in; shown only now"})
    html = ma.fields.String(metadata={
        "description": "an example <img> with a merge field in place of the document id"})
