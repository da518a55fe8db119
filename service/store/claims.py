"""What a forwarder and the documents' state machine (``documents``) hand each other: a
claimed document (``Claim``) and what became of its send (``Outcome``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..highlevel.client import RateLimit


@dataclass(frozen=True)
class Claim:
    """A leased document: send one PATCH covering views (seq_from, seq_to]."""

    row_id: int
    kind: str
    location_id: str
    document_id: str
    seq_from: int
    seq_to: int
    attempts: int
    pending_since: dt.datetime
    lease_token: str
    request_id: str | None = None
    locked_until: dt.datetime | None = None  # when the lease ends unless renewed

    @property
    def views(self) -> int:
        return self.seq_to - self.seq_from


@dataclass(frozen=True)
class Outcome:
    """What the forwarder decided after one attempt; ``apply_outcomes`` applies it."""

    result: str  # delivered | retry | dead | blocked
    outcome: str  # the delivery-log label: delivered, retry, rate_limited, permanent, ...
    http_status: int | None = None
    message: str | None = None
    trace_id: str | None = None
    latency_ms: int | None = None
    next_due: dt.datetime | None = None  # for retry
    spend_attempt: bool = True  # a 429 does not spend the retry budget
    rate_limit: RateLimit = field(default_factory=RateLimit)  # what HighLevel's headers said
    retry_after: float | None = None
    answered_at: dt.datetime | None = None  # when HighLevel's answer came (None: no send)
