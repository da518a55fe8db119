"""``flask --app service pixel-prefix create|list|revoke``: location pixels for templated
emails (``web/pixel_prefixes.py`` does the work, as for the API and the console)."""

from __future__ import annotations

import json

import click
import marshmallow as ma
from flask.cli import AppGroup

from ..ids import ID_RULE, is_valid_id
from ..store.prefixes import PREFIX_KINDS, list_prefixes
from ..web.deps import services

prefix_cli = AppGroup("pixel-prefix", help="Location pixels for templated emails.")


def _id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_valid_id(value):
        raise click.BadParameter(f"must be {ID_RULE}")
    return value


@prefix_cli.command("create")
@click.argument("location_id", callback=_id)
@click.option("--kind", type=click.Choice(PREFIX_KINDS), default="invoice", show_default=True)
@click.option("--name", default=None, help="A label: which template or sender it is for.")
def create(location_id: str, kind: str, name: str | None) -> None:
    """Opt LOCATION_ID in: print a prefix's id, URL template and an example <img> (shown
    only now; anyone holding it can mark any document of that kind viewed)."""
    from ..web.pixel_prefixes import mint_prefix
    from ..web.schemas.prefixes import PixelPrefixRequestSchema

    body = {"kind": kind, **({"name": name} if name is not None else {})}
    try:
        data = PixelPrefixRequestSchema().load(body)
    except ma.ValidationError as exc:
        raise click.BadParameter(json.dumps(exc.messages)) from None
    minted = mint_prefix(location_id, data["kind"], name=data.get("name"))
    click.echo(minted["id"])
    click.echo(minted["urlTemplate"])
    click.echo(minted["html"])


@prefix_cli.command("list")
@click.argument("location_id", callback=_id)
def list_command(location_id: str) -> None:
    """List LOCATION_ID's prefixes (never the prefix itself)."""
    rows = list_prefixes(services().engine, location_id)
    for row in rows:
        revoked = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{row.kind}\t{row.created_at.isoformat()}\t{revoked}\t"
                   f"{row.name or ''}")
    if not rows:
        click.echo(f"no pixel prefixes for {location_id}")


@prefix_cli.command("revoke")
@click.argument("location_id", callback=_id)
@click.argument("prefix_id", callback=_id)
def revoke_command(location_id: str, prefix_id: str) -> None:
    """Revoke a prefix: its URLs keep answering the GIF and record nothing."""
    from ..web.pixel_prefixes import revoke

    if revoke(location_id, prefix_id) is None:
        raise click.ClickException(f"{location_id} has no pixel prefix {prefix_id}")
    click.echo(f"revoked {prefix_id} of {location_id}")
