"""Admin routes over the delivery log: read it, replay dead letters."""

from __future__ import annotations

import marshmallow as ma

from ..store.deliverylog import LogFilter, list_deliveries
from .auth import require_admin_key
from .bodies import Blueprint
from .deps import services
from .schemas import DeliveryPageSchema, DeliveryQuerySchema, ReplayResultSchema, ReplaySchema

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries",
               description="The delivery log and dead-letter replay")
SECURITY = [{"adminKey": []}]


def to_filter(args: dict) -> LogFilter:
    return LogFilter(location_id=args.get("locationId"), document_id=args.get("documentId"),
                     outcome=args.get("outcome"), since=args.get("since"),
                     until=args.get("until"))


@bp.route("", methods=["GET"])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.arguments(DeliveryQuerySchema, location="query", unknown=ma.RAISE)
@bp.response(200, DeliveryPageSchema)
def get_deliveries(args):
    """Every send attempt, newest first: status, HighLevel's message, latency, views."""
    page, cursor = list_deliveries(services().engine, to_filter(args), limit=args["limit"],
                                   before=args.get("cursor"))
    return {"deliveries": page, "nextCursor": cursor}


@bp.route("/replay", methods=["POST"])
@bp.doc(security=SECURITY)
@require_admin_key
@bp.arguments(ReplaySchema)
@bp.response(200, ReplayResultSchema)
def post_replay(body):
    """Re-queue dead views matching the filter; running it again replays nothing more."""
    svc = services()
    return {"replayed": svc.store.replay(to_filter(body), now=svc.clock())}
