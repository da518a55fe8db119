"""The one way a view is built: from the API, the pixel, the beacon and every source.

Whatever it came through, a view gets its verdict (``verdicts.Classifier``, unless the
source already knows it) and, from that and ``MACHINE_OPENS``, whether it is forwarded;
the store takes the result (``store.queue.View``).
"""

from __future__ import annotations

import datetime as dt

from ..store.queue import View
from .verdicts import Classifier, Verdict, should_forward


def build_view(classifier: Classifier, *, machine_opens: str, kind: str, location_id: str,
               document_id: str, viewed_at: dt.datetime, source: str | None,
               user_agent: str | None = None, ip: str | None = None,
               event_key: str | None = None, request_id: str | None = None,
               verdict: Verdict | None = None) -> View:
    """A view of ``kind``/``document_id`` at ``location_id``, with its verdict."""
    verdict = verdict or classifier.classify(user_agent=user_agent, ip=ip)
    return View(kind=kind, location_id=location_id, document_id=document_id,
                viewed_at=viewed_at, event_key=event_key, source=source,
                user_agent=user_agent, ip=ip, verdict=verdict.verdict,
                verdict_reason=verdict.reason,
                forward=should_forward(verdict.verdict, machine_opens),
                request_id=request_id)
