"""The webhook outbox: events written in the transaction of the row they announce, and the
queries the delivery worker (service/webhooks/) runs on them.

Why an outbox: an event sent straight from the call would be lost when the node dies
between committing a segment and sending its event, and would make the call wait on an
HTTP server. Here the event is a row committed *with* the segment (or the call) it
announces, so it exists exactly when that row does; a worker sends it later, at least
once, and deletes it when the endpoint took it.

Order: each call's events go out one at a time, in the order they were written. The
worker only ever tries the *head* of a call's queue (its lowest id), so a call's next
event waits while its earlier one is retried; other calls are not held up.

Claims: a try in flight holds its row (``claimed_until``) so that another node sharing the
database, or this one after a restart, neither sends it twice at once nor sends the call's
next event past it. A claim ends with the try (deleted, or rescheduled), or on its own after
``CLAIM_S`` when the process died mid-try.

Event bodies follow the Standard Webhooks shape, ``{"type", "timestamp", "data"}``; the
types and their ``data`` are in docs/webhooks.md.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update

from .models import Call, OutboxRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.vocab import Segment

WROTE = "outbox_wrote"  # Session.info key: this transaction added events
CLAIM_S = 60.0  # longer than any one try (service/webhooks/sender.py bounds a try at 30 s)

CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
SEGMENT_FINAL = "segment.final"
TRANSCRIPT_REVISED = "transcript.revised"
EVENT_TYPES = (CALL_STARTED, CALL_ENDED, SEGMENT_FINAL, TRANSCRIPT_REVISED)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def call_data(call: Call) -> dict[str, Any]:
    """``data`` of call.started and call.ended: what a receiver needs to file the call
    (its device specs stay on the node)."""
    return {
        "call_id": call.id,
        "node_id": call.node_id,
        "mode": call.mode,
        "state": call.state,
        "address": call.local_address,
        "peer": call.peer_address,
        "language": call.language,
        "task": call.task,
        "transcribe": call.transcribe_field,  # true, false or "after", as the API says
        "created_at": _iso(call.created_at),
        "connected_at": _iso(call.connected_at),
        "ended_at": _iso(call.ended_at),
        "end_reason": call.end_reason,
        "frames_sent": call.frames_sent,
        "frames_received": call.frames_received,
        "rejected_connections": call.rejected_connections,
        "segments_refused": call.segments_refused,
    }


def segment_data(call_id: str, row_id: int, segment: Segment) -> dict[str, Any]:
    """``data`` of segment.final: the stored segment, as the live feed shows a final (of
    the live revision: a later revision is announced whole, by transcript.revised)."""
    return {
        "call_id": call_id,
        "revision": "live",
        "id": row_id,
        "speaker": segment.speaker,
        "number": segment.number,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "language": segment.language,
        "task": segment.task,
    }


def revision_data(
    call_id: str, revision: str, previous: str | None, segments: int, reason: str
) -> dict[str, Any]:
    """``data`` of transcript.revised: which revision of which call is now stored (the text
    is read from the API: a revision can be a whole call long)."""
    return {
        "call_id": call_id,
        "revision": revision,
        "previous_revision": previous,
        "segments": segments,
        "reason": reason,
        "transcript": f"/sessions/{call_id}/transcript?revision={revision}",
    }


@dataclass(frozen=True)
class Due:
    """A row the worker is to try now (it holds the row's claim)."""

    id: int
    event_id: str
    call_id: str | None
    type: str
    body: str
    attempts: int


class Outbox:
    """Built by the Store with its session factory. ``endpoints`` empty (the default): no
    webhooks, nothing is written. ``wake`` is called after a commit that wrote events."""

    def __init__(self, sessions: Callable[[], Any]) -> None:
        self._sessions = sessions  # Store.session: a transaction per use
        self.endpoints: tuple[str, ...] = ()
        self.wake: Callable[[], None] = lambda: None

    # -- writing, inside the caller's transaction -----------------------------------------

    def add(
        self, s: Session, type: str, call_id: str | None, data: dict[str, Any], at: datetime
    ) -> None:
        """One event for every endpoint, in the caller's transaction ``s``."""
        if not self.endpoints:
            return
        event_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(
            {"type": type, "timestamp": at.isoformat(), "data": data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        now = time.time()
        s.execute(
            insert(OutboxRow),
            [
                {
                    "event_id": event_id,
                    "endpoint": endpoint,
                    "call_id": call_id,
                    "type": type,
                    "body": body,
                    "created_at": at,
                    "attempts": 0,
                    "due_at": now,
                }
                for endpoint in self.endpoints
            ],
        )
        s.info[WROTE] = True  # the Store wakes the worker once this transaction commits

    @staticmethod
    def wrote(s: Session) -> bool:
        """Whether transaction ``s`` added events. Per transaction: the Store's writes run
        on several threads at once, and one's commit must not report another's events."""
        return bool(s.info.get(WROTE))

    # -- the worker's side ----------------------------------------------------------------

    def due(self, endpoint: str, limit: int, now: float | None = None) -> list[Due]:
        """Claim and return up to ``limit`` rows to try now: the head of each call's queue
        for ``endpoint``, when it is due and nobody holds it; oldest first."""
        now = time.time() if now is None else now
        heads = (
            select(func.min(OutboxRow.id))
            .where(OutboxRow.endpoint == endpoint)
            .group_by(OutboxRow.call_id)
        )
        free = (OutboxRow.claimed_until.is_(None)) | (OutboxRow.claimed_until < now)
        with self._sessions() as s:
            ids = list(
                s.scalars(
                    select(OutboxRow.id)
                    .where(OutboxRow.id.in_(heads), OutboxRow.due_at <= now, free)
                    .order_by(OutboxRow.id)
                    .limit(limit)
                )
            )
            if not ids:
                return []
            # Claimed in one statement, and only what is still free: of two nodes racing
            # for a row, one gets it.
            claimed = set(
                s.scalars(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(ids), free)
                    .values(claimed_until=now + CLAIM_S)
                    .returning(OutboxRow.id)
                )
            )
            rows = s.scalars(select(OutboxRow).where(OutboxRow.id.in_(claimed))).all()
            return sorted(
                (Due(r.id, r.event_id, r.call_id, r.type, r.body, r.attempts) for r in rows),
                key=lambda d: d.id,
            )

    def next_due(self, endpoint: str) -> float | None:
        """When the earliest head of ``endpoint`` is due (epoch s); None: nothing waits."""
        heads = (
            select(func.min(OutboxRow.id))
            .where(OutboxRow.endpoint == endpoint)
            .group_by(OutboxRow.call_id)
        )
        # A held row is tried again when its claim ends (its try, if alive, ends sooner).
        ready_at = func.coalesce(OutboxRow.claimed_until, OutboxRow.due_at)
        with self._sessions() as s:
            return s.scalar(select(func.min(ready_at)).where(OutboxRow.id.in_(heads)))

    def delivered(self, ids: list[int]) -> None:
        if ids:
            with self._sessions() as s:
                s.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))

    def failed(self, row_id: int, attempts: int, due_at: float, error: str) -> None:
        """A try failed: count it, release the claim, and try again at ``due_at``."""
        with self._sessions() as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id)
                .values(attempts=attempts, due_at=due_at, claimed_until=None, last_error=error)
            )

    def retry_now(self, endpoints: tuple[str, ...]) -> int:
        """At start: every row of ``endpoints`` is due at once, its claim released (a
        restart is a reason to try again, not to wait out a backoff or a claim of the
        killed run). A claim of another node's live try released too can only make that
        event arrive twice, never out of order: the call's next event still waits until
        this one is deleted, which is after a delivery. How many rows were waiting."""
        now = time.time()
        with self._sessions() as s:
            result = s.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.endpoint.in_(endpoints),
                    (OutboxRow.due_at > now) | OutboxRow.claimed_until.is_not(None),
                )
                .values(due_at=now, claimed_until=None)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def pending(self) -> dict[str, int]:
        """Rows waiting, per endpoint name (configured or not)."""
        with self._sessions() as s:
            stmt = select(OutboxRow.endpoint, func.count()).group_by(OutboxRow.endpoint)
            return {endpoint: n for endpoint, n in s.execute(stmt)}

    def prune(self, endpoint: str, most: int) -> tuple[int, int]:
        """Keep at most ``most`` rows of ``endpoint``: delete the oldest beyond that (an
        endpoint dead for days must not fill the disk). The rows left, and those deleted."""
        with self._sessions() as s:
            n = s.scalar(select(func.count()).where(OutboxRow.endpoint == endpoint)) or 0
            excess = n - most
            if excess <= 0:
                return n, 0
            oldest = (
                select(OutboxRow.id)
                .where(OutboxRow.endpoint == endpoint)
                .order_by(OutboxRow.id)
                .limit(excess)
            )
            s.execute(delete(OutboxRow).where(OutboxRow.id.in_(oldest.scalar_subquery())))
            return most, excess
