"""The overview: views per hour and per day as charts, the queue, latency, and the
locations that need attention, listed first."""

from __future__ import annotations

from flask import redirect, render_template, url_for

from ..deps import services
from . import bp
from .charts import day_label, hour_label, line_chart
from .locations import STATES

# States that need a person, in the order the page lists them.
ATTENTION = [state for state in STATES if state != "ok"]
PER_STATE = 10


@bp.get("/")
def home():
    return redirect(url_for("console.overview"))


@bp.get("/overview")
def overview():
    """Where things stand: what needs attention, then traffic, queue and latency."""
    svc = services()
    now = svc.clock()
    stats = svc.store.overview(now=now)
    attention = [{"state": state, "label": STATES[state], "rows": rows, "more": more}
                 for state, (rows, more) in svc.store.attention(
                     ATTENTION, limit=PER_STATE, now=now).items() if rows]
    charts = [
        line_chart(stats["hourly"], title="Views per hour, last 24 hours", label=hour_label,
                   label_every=3),
        line_chart(stats["daily"], title="Views per day, last 30 days", label=day_label,
                   label_every=5),
    ]
    return render_template("console/overview.html", stats=stats, charts=charts,
                           attention=attention, states=STATES)
