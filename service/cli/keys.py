"""``flask --app service keys create|list|revoke``: keys kept in the store (thin commands
over what ``POST``, ``GET`` and ``DELETE /v1/keys`` call). The package adds them to its
``keys`` group, beside ``keys generate`` and ``keys show``."""

from __future__ import annotations

import json

import click
import marshmallow as ma
from flask.cli import with_appcontext

from ..store.apikeys import SCOPES
from ..web.deps import services


@click.command("create")
@click.option("--name", required=True, help="What uses the key (for people).")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(SCOPES), help="Repeat for several; admin implies all.")
@click.option("--location", "locations", multiple=True,
              help="With events:write: a location it may post for (repeat); default: all.")
@with_appcontext
def keys_create(name: str, scopes: tuple[str, ...], locations: tuple[str, ...]) -> None:
    """Make a key and print it, this once, as the last line of stdout (the store keeps only
    its hash); what it may do goes to stderr."""
    from ..web.keys import create_key
    from ..web.schemas import KeyCreateSchema

    body: dict = {"name": name, "scopes": list(scopes)}
    if locations:
        body["locations"] = list(locations)
    try:
        loaded = KeyCreateSchema().load(body)
    except ma.ValidationError as exc:
        raise click.BadParameter(json.dumps(exc.messages)) from None
    created = create_key(loaded)
    click.echo(created["key"])
    where = ", ".join(created["locations"]) if created["locations"] else "every location"
    click.echo(f"key {created['id']} {created['name']!r} ({created['prefix']}…): "
               f"{', '.join(created['scopes'])} for {where}. Shown once: keep it now.",
               err=True)


@click.command("list")
@with_appcontext
def keys_list() -> None:
    """List the stored keys (never a key: its prefix)."""
    rows = services().keys.list()
    for r in rows:
        when = r["revokedAt"].isoformat() if r["revokedAt"] else "active"
        used = r["lastUsedAt"].isoformat() if r["lastUsedAt"] else "never used"
        locations = ",".join(r["locations"]) if r["locations"] else "*"
        click.echo(f"{r['id']}\t{r['prefix']}…\t{r['name']}\t{','.join(r['scopes'])}\t"
                   f"{locations}\t{used}\t{when}")
    if not rows:
        click.echo("no keys stored")


@click.command("revoke")
@click.argument("key_id", type=click.IntRange(min=1))
@with_appcontext
def keys_revoke(key_id: int) -> None:
    """Revoke a stored key: every process refuses it within seconds."""
    from ..web.keys import revoke_key

    if not revoke_key(key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked key {key_id}")


COMMANDS = (keys_create, keys_list, keys_revoke)
