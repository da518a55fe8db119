"""Command line: ``flask --app service <command>``; each is a thin wrapper."""

from __future__ import annotations

import json
import logging
import signal
import threading

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from ..ids import ID_RULE, is_valid_id
from ..web.deps import services

logger = logging.getLogger(__name__)

db_cli = AppGroup("db", help="Schema migrations.")
tokens_cli = AppGroup("tokens", help="Per-location HighLevel tokens.")
keys_cli = AppGroup("keys", help="API keys and secrets.")


def _id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an id argument that breaks the id rule (as the API does)."""
    if value is not None and not is_valid_id(value):
        raise click.BadParameter(f"must be {ID_RULE}")
    return value


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema."""
    from ..store.engine import current_revision, upgrade

    upgrade(services().engine, revision)
    click.echo(f"database at revision {current_revision(services().engine)}")


@click.command("forwarder")
@click.option("--once", is_flag=True, help="Handle what is due now, then exit.")
@click.option("--max-batches", type=int, default=None, help="Exit after N iterations.")
@with_appcontext
def forwarder_command(once: bool, max_batches: int | None) -> None:
    """Send due views to HighLevel until SIGTERM (or, with --once, until none is due)."""
    from ..forward.forwarder import run
    from ..metrics import serve as serve_metrics

    # Its own metrics endpoint, off by default (README, "Metrics").
    address = services().config["FORWARDER_METRICS_PORT"]
    try:
        stop_metrics = serve_metrics(address) if address else None
    except OSError as exc:
        raise click.ClickException(
            f"FORWARDER_METRICS_PORT {address[0]}:{address[1]}: {exc}") from None
    from ..forward.notify import run as send_notifications
    from ..wiring import build_forwarder, build_sender

    forwarder = build_forwarder(services())
    sender = build_sender(services())  # operator notifications; None without URLs
    notifier = None
    if sender and not once:  # --once posts what is due after forwarding, below
        notifier = threading.Thread(target=send_notifications, args=(sender,),
                                    name="notify", daemon=True)

    def on_signal(signum, _frame):
        # Only a flag: the loop finishes its batch and exits. Set from another thread:
        # Event.set() takes the event's (non-reentrant) lock, and the handler runs in
        # the main thread, which may hold that very lock inside stop.wait() - a deadlock
        # seen in CI as a forwarder that never exited after SIGTERM.
        threading.Thread(target=forwarder.stop.set, name="stop", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("forwarder.started", extra={
        "concurrency": forwarder.concurrency,
        "metrics": f"http://{address[0]}:{address[1]}/metrics" if address else None})
    try:
        if notifier:
            notifier.start()
        handled = run(forwarder, once=once, max_batches=max_batches)
        if sender and once:
            sender.send_due()
    finally:
        if notifier:  # it finishes the POST in hand (a few seconds at most)
            sender.stop.set()
            notifier.join(timeout=15)
        forwarder.executor.shutdown(wait=True)
        if stop_metrics:
            stop_metrics()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("forwarder.stopped", extra={"handled": handled})
    click.echo(f"forwarder handled {handled} document(s)")


@click.command("pixel-url")
@click.argument("location_id", callback=_id)
@click.argument("document_id", callback=_id)
@click.option("--estimate", is_flag=True, help="The document is an estimate, not an invoice.")
@click.option("--expires-in", type=int, default=None, help="Seconds until the URL stops counting.")
@with_appcontext
def pixel_url_command(location_id: str, document_id: str, estimate: bool,
                      expires_in: int | None) -> None:
    """Print a signed pixel URL and a ready <img> tag for an invoice (or estimate) email."""
    from ..web.pixels import mint

    try:
        minted = mint(location_id, document_id, kind="estimate" if estimate else "invoice",
                      expires_in=expires_in)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(minted["url"])
    click.echo(minted["html"])


@tokens_cli.command("set")
@click.argument("location_id", callback=_id)
@click.option("--access-token", prompt=True, hide_input=True, envvar="HL_ACCESS_TOKEN",
              help="Read from a prompt or $HL_ACCESS_TOKEN so it stays out of shell history.")
@click.option("--refresh-token", default=None, envvar="HL_REFRESH_TOKEN")
@click.option("--expires-in", type=int, default=None, help="Seconds until the token expires.")
@click.option("--company-id", default=None)
def tokens_set(location_id, access_token, refresh_token, expires_in, company_id) -> None:
    """Store a location's token (a Private Integration Token, or OAuth tokens)."""
    from ..forward.token_rules import UnrefreshableTokenError
    from ..web.locations import save_token
    from ..web.schemas import TokenSchema

    body = {"accessToken": access_token}
    body.update({k: v for k, v in (("refreshToken", refresh_token), ("expiresIn", expires_in),
                                   ("companyId", company_id)) if v is not None})
    import marshmallow as ma

    try:
        data = TokenSchema().load(body)
    except ma.ValidationError as exc:
        raise click.BadParameter(json.dumps(exc.messages)) from None
    try:
        released = save_token(location_id, data)
    except UnrefreshableTokenError as exc:
        raise click.BadParameter(str(exc), param_hint="'--refresh-token'") from None
    click.echo(f"stored token for {location_id}; {released} parked document(s) released")


@tokens_cli.command("list")
def tokens_list() -> None:
    """List locations with a token (never the token)."""
    rows = services().vault.list()
    for row in rows:
        expires = row["expiresAt"].isoformat() if row["expiresAt"] else "-"
        click.echo(f"{row['locationId']}\t{row['tokenKind']}\t{row['status']}\t{expires}\t"
                   f"{row['lastError'] or ''}")
    if not rows:
        click.echo("no tokens stored")


@tokens_cli.command("delete")
# Not checked: lets an operator remove a row stored before ids were checked in full.
@click.argument("location_id")
def tokens_delete(location_id: str) -> None:
    """Remove a location's token; its views wait until a new one is stored."""
    svc = services()
    if not svc.vault.delete_token(location_id):
        raise click.ClickException(f"no token stored for {location_id}")
    parked = svc.store.block_location(location_id, now=svc.clock())
    click.echo(f"deleted token for {location_id}; {parked} document(s) parked")


@tokens_cli.command("reencrypt")
def tokens_reencrypt() -> None:
    """Re-encrypt every token with the first TOKEN_ENCRYPTION_KEYS key (after a rotation)."""
    click.echo(f"re-encrypted {services().vault.reencrypt()} location token(s)")


@keys_cli.command("generate")
def keys_generate() -> None:
    """Print fresh values for every secret, as environment lines (production set-up)."""
    from ..config import generate_secrets
    from ..config.dev_secrets import generate_webhook_secret

    for name, values in generate_secrets().items():
        click.echo(f"{name}={','.join(values)}")
    click.echo(f"OPERATOR_WEBHOOK_SECRET={generate_webhook_secret()}")


@keys_cli.command("show")
def keys_show() -> None:
    """Print the development ingest and admin keys (refused in production)."""
    cfg = services().config
    if cfg["RELAY_ENV"] == "production":
        raise click.ClickException("keys show is for development only")
    click.echo(f"INGEST_API_KEYS={','.join(cfg['INGEST_API_KEYS'])}")
    click.echo(f"ADMIN_API_KEYS={','.join(cfg['ADMIN_API_KEYS'])}")


def _filter_options(command):
    """The delivery log's filter as options, named as the API's fields (``log_filter``)."""
    for option in reversed([
        click.option("--location", "locationId", default=None),
        click.option("--document", "documentId", default=None),
        click.option("--outcome", default=None),
        click.option("--since", type=click.DateTime(), default=None, help="UTC"),
        click.option("--until", type=click.DateTime(), default=None, help="UTC"),
    ]):
        command = option(command)
    return command


@click.command("deliveries")
@_filter_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@with_appcontext
def deliveries_command(limit: int, **filters) -> None:
    """Print the delivery log (newest first) as a table."""
    from ..store.deliverylog import list_deliveries
    from ..web.deliveries import log_filter

    rows, _ = list_deliveries(services().engine, log_filter(filters), limit=limit)
    header = ("at", "location", "kind", "document", "try", "outcome", "http", "ms", "views",
              "message")
    table = [header] + [(
        r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["locationId"], r["kind"], r["documentId"],
        str(r["attempt"]), r["outcome"], str(r["httpStatus"] or "-"),
        str(r["latencyMs"] if r["latencyMs"] is not None else "-"), str(r["viewsCovered"]),
        (r["message"] or "")[:60]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                   + "  " + row[-1])
    if not rows:
        click.echo("no deliveries match")


@click.command("replay")
@_filter_options
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead view.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; change nothing.")
@with_appcontext
def replay_command(replay_all: bool, dry_run: bool, **filters) -> None:
    """Re-queue dead views (by location, document, outcome or time); say how many."""
    from ..web.deliveries import log_filter

    filters = log_filter(filters)
    if filters.empty() and not replay_all:
        raise click.UsageError("give a filter, or --all to replay every dead view")
    svc = services()
    count = svc.store.replay(filters, now=svc.clock(), dry_run=dry_run)
    click.echo(f"{'would replay' if dry_run else 'replayed'} {count} document(s)")


@click.command("purge")
@click.argument("location_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def purge_command(location_id: str, yes: bool) -> None:
    """Delete everything stored for a location (a data-erasure request)."""
    from ..store.retention import purge_location

    if not yes:
        click.confirm(f"Delete every event, document, delivery, token and install of "
                      f"{location_id!r}?", abort=True)
    counts = purge_location(services().engine, location_id)
    click.echo(f"purged {location_id}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))


def init_app(app: Flask) -> None:
    """Register the commands."""
    from .keys import COMMANDS as stored_keys  # keys create|list|revoke
    from .prefixes import prefix_cli

    for command in stored_keys:
        keys_cli.add_command(command)
    for command in (db_cli, tokens_cli, keys_cli, forwarder_command, pixel_url_command,
                    deliveries_command, replay_command, purge_command, prefix_cli):
        app.cli.add_command(command)

