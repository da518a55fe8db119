"""A group of views before it is written: the values the store takes, and what each view
of a group is (new, a duplicate, a client's repeat, or a conflict). No database here:
``recording.ViewWriter`` writes what ``sort_group`` decides."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class View:
    """One "document viewed" event, validated, as the store takes it."""

    kind: str  # invoice | estimate
    location_id: str
    document_id: str
    viewed_at: dt.datetime
    event_key: str | None = None
    source: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    verdict: str = "human"
    verdict_reason: str | None = None
    forward: bool = True
    request_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str  # queued | duplicate | filtered
    coalesced: bool = False  # joined views already waiting for the same document
    repeat: bool = False  # a client's repeat in the window: counted on the row ``id``


class IdempotencyConflict(Exception):
    """An eventId this location already used for another document (Stripe's rule for a
    reused idempotency key: refuse, rather than answer for the other document)."""

    def __init__(self, event_key: str, location_id: str):
        super().__init__(
            f"eventId {event_key!r} was already used for another document of location "
            f"{location_id!r}; use a new eventId for each event")
        self.event_key = event_key
        self.location_id = location_id


class Row(NamedTuple):
    """A view as the ``events`` table stores it (times already in the dialect's form), and
    its client key. The statements' column lists are these fields' names (``view_sql``)."""

    id: str
    event_key: str | None
    kind: str
    location_id: str
    document_id: str
    viewed_at: Any
    received_at: Any
    source: str | None
    user_agent: str | None
    ip: str | None
    verdict: str
    verdict_reason: str | None
    forward: bool
    request_id: str | None
    client: str | None  # not a column: the key of a client's repeats (``clients``)

    @property
    def doc(self) -> tuple[str, str, str]:
        """The document's key: (kind, location, document)."""
        return self[2:5]

    def stored(self) -> tuple:
        """The values stored, in ``STORED`` order (every field but the client key)."""
        return self[:-1]


STORED = Row._fields[:-1]  # the events columns a Row fills


@dataclass(frozen=True)
class Prepared:
    """One request's views, ready for ``ViewWriter.write``: (view, row) each; and the rows
    this process stored for its clients in the window (client key -> event id)."""

    views: tuple[tuple[View, Row], ...]
    window: int | None = None
    known: dict = field(default_factory=dict)


def sort_group(group: Sequence[Prepared], seen: dict, known: dict):
    """Decide what each view of ``group`` is: a duplicate (its eventId seen for the same
    document), a repeat (its client key already has a row), a conflict (its eventId seen
    for another document: the whole request is refused) or a new row.

    Returns the new rows, an answer list per request (an ``Accepted``, or the index of
    its new row; or the request's ``IdempotencyConflict``), the ``views`` of each new row,
    and the views to add to rows already stored (event id -> n).
    """
    rows: list[tuple[View, Row]] = []
    repeats: list[int] = []  # per new row: the views it stands for
    folded: dict[str, int] = {}
    answers: list = []
    fresh: dict[str, int] = {}  # client key -> index of its new row
    for prep in group:
        conflict = _conflict(prep, seen)
        if conflict is not None:
            answers.append(conflict)
            continue
        out: list = []
        for view, row in prep.views:
            status = "queued" if view.forward else "filtered"
            if view.event_key is not None:
                first = seen.get((view.location_id, view.event_key))
                if first is not None:
                    out.append(Accepted(first[0], "duplicate"))
                    continue
                seen[(view.location_id, view.event_key)] = (row.id, view.kind,
                                                             view.document_id)
            elif row.client is not None:
                client = row.client  # (it names the location and the document too)
                if client in known:
                    folded[known[client]] = folded.get(known[client], 0) + 1
                    out.append(Accepted(known[client], status, repeat=True))
                    continue
                if client in fresh:
                    repeats[fresh[client]] += 1
                    out.append(Accepted(rows[fresh[client]][1].id, status, repeat=True))
                    continue
                fresh[client] = len(rows)
            out.append(len(rows))
            rows.append((view, row))
            repeats.append(1)
        answers.append(out)
    return rows, answers, repeats, folded


def _conflict(prep: Prepared, seen: dict) -> IdempotencyConflict | None:
    """The conflict that refuses ``prep``: an eventId its location used (before, or
    earlier in this request) for another document."""
    mine: dict[tuple, tuple] = {}
    for view, _ in prep.views:
        if view.event_key is None:
            continue
        key = (view.location_id, view.event_key)
        first = mine.get(key) or seen.get(key)
        if first is not None and first[1:] != (view.kind, view.document_id):
            return IdempotencyConflict(view.event_key, view.location_id)
        mine.setdefault(key, (None, view.kind, view.document_id))
    return None


def event_id_at(now: dt.datetime) -> str:
    """A new event id: a UUIDv7 (RFC 9562) of the time the view was received, so ids sort
    by arrival (appending to the primary key's index) and the time of an id is
    ``received_at``'s, which lets pruning walk the primary key
    (``retention.prune_events``). Formatted by hand: ``uuid.UUID`` costs several times more
    on the pixel's path."""
    ms = f"{int(now.timestamp() * 1000) & 0xFFFFFFFFFFFF:012x}"
    rand = secrets.randbits(74)  # 12 bits of rand_a, 62 of rand_b
    return (f"{ms[:8]}-{ms[8:]}-7{rand >> 62:03x}-{0x8000 | (rand >> 48) & 0x3FFF:04x}-"
            f"{rand & 0xFFFFFFFFFFFF:012x}")


def event_id_floor(at: dt.datetime) -> str:
    """The smallest event id of the millisecond ``at``: every id made before it sorts below,
    every id made at or after it sorts at or above (``event_id_at``)."""
    ms = f"{int(at.timestamp() * 1000) & 0xFFFFFFFFFFFF:012x}"
    return f"{ms[:8]}-{ms[8:]}-7000-8000-000000000000"


def chunks(items: list, size: int):
    return (items[i:i + size] for i in range(0, len(items), size))
