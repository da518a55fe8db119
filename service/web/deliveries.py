"""Admin routes over the delivery log: read it, replay dead letters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..store.deliverylog import LogFilter, list_deliveries
from .auth import require_scope
from .bodies import Blueprint
from .deps import services
from .schemas import DeliveryPageSchema, DeliveryQuerySchema, ReplayResultSchema, ReplaySchema

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries",
               description="The delivery log and dead-letter replay")


def log_filter(args: Mapping[str, Any]) -> LogFilter:
    """Build the delivery log's filter from the API's fields, which the CLI's options
    share; a time without an offset (the CLI's) is UTC."""

    def utc(value: dt.datetime | None) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value and value.tzinfo is None else value

    return LogFilter(location_id=args.get("locationId"), document_id=args.get("documentId"),
                     outcome=args.get("outcome"), since=utc(args.get("since")),
                     until=utc(args.get("until")))


@bp.route("", methods=["GET"])
@require_scope("read")
@bp.arguments(DeliveryQuerySchema, location="query")
@bp.response(200, DeliveryPageSchema)
def get_deliveries(args):
    """Every send attempt, newest first: status, HighLevel's message, latency, views."""
    page, cursor = list_deliveries(services().engine, log_filter(args), limit=args["limit"],
                                   before=args.get("cursor"))
    return {"deliveries": page, "nextCursor": cursor}


@bp.route("/replay", methods=["POST"])
@require_scope("admin")
@bp.arguments(ReplaySchema)
@bp.response(200, ReplayResultSchema)
def post_replay(body):
    """Re-queue dead views matching the filter; running it again replays nothing more.
    With ``dryRun``, answer how many it would re-queue and change nothing."""
    svc = services()
    return {"replayed": svc.store.replay(log_filter(body), now=svc.clock(),
                                         dry_run=body["dryRun"])}
