"""GET /sessions/<id>/events: a call's live feed as Server-Sent Events.

Why SSE: it is one long-lived HTTP response, readable by any HTTP client (curl, requests,
fetch) through the same bearer guard as every other route, and its `Last-Event-ID`
is exactly the resume point we need. Only finals are stored, so only finals carry an
`id:` (their segment id): a client's last event id means "finals up to here", and a
reconnect replays the finals stored after it from the database before going live.

No duplicate and no gap: the feed subscribes to the call's bus *before* it reads the
store, so a final committed in between is both replayed and queued live; the live copy
is skipped because its id is not above the last one replayed.

Each open feed is one greenlet that waits on its own bounded queue (see
service.calls.events); writing to a client that does not read blocks only that greenlet,
and its queue is cut off at the bound instead of growing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, request
from gevent.queue import Empty
from spectree import Response as Resp

from service.api import views
from service.api.errors import ApiError
from service.api.schemas import MAX_SEGMENT_ID, ErrorBody, EventsQuery
from service.api.spec import spec
from service.calls.events import StateChange
from service.store.db import PASS_OPEN
from service.vocab import CallState

if TYPE_CHECKING:
    from service.calls.events import Listener
    from service.calls.session import CallSession
    from service.node import Node
    from service.store.models import SegmentRow

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__)

STATS_INTERVAL_S = 1.0
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # how long an EventSource waits before reconnecting
ENDED_STATES = (CallState.ENDED, CallState.FAILED, CallState.INTERRUPTED)

STREAM_DOC = """\
`text/event-stream`. Events (`event:` name, `data:` one JSON object with `call_id`):
`state` {state, end_reason} first with the current state and then at every change;
`final` {id, speaker, utterance, number, text, start, end, language, task}, `id:` = its id;
`partial` {speaker, utterance, text, start, end} while someone speaks (not stored, no id);
`stats` {stats} about once a second while the call is live (the session's `stats`);
`cut_off` {reason} when this client fell too far behind (reconnect with `Last-Event-ID`);
`revision` {id, state, model, progress, segments, live_missed, error, ...} with
`revision=true`: after the end, the call's post-call pass (its final revision), once it is
`done` or `failed`. A `: keepalive` comment comes when nothing else was sent for 15 s. The
stream ends after the `state` event of an ended call, or with `revision=true` after its
`revision` event when it has a pass."""


def sse(kind: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One event. The JSON is a single line (json escapes newlines), as `data:` needs."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


def _resume_point(query: EventsQuery) -> int:
    """The header wins over the query: an EventSource sends it on every reconnect, newer
    than whatever id the page was first opened with."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return query.last_event_id or 0
    if not header.isascii() or not header.isdigit() or int(header) > MAX_SEGMENT_ID:
        raise ApiError(
            400,
            "invalid_request",
            "Last-Event-ID must be the id of a final event (a non-negative integer)",
        )
    return int(header)


@bp.get("/sessions/<call_id>/events")
@spec.validate(
    query=EventsQuery,
    resp=Resp(HTTP_200=(None, STREAM_DOC), HTTP_400=ErrorBody, HTTP_404=ErrorBody),
    tags=["sessions"],
)
def events(call_id: str, query: EventsQuery):
    """The call's live feed (Server-Sent Events): finals, partials, state changes, stats.

    Finals stored after `Last-Event-ID` (header) or `last_event_id` (query; default 0, so
    a first connection gets every final so far) are replayed first, then the feed is
    live. For a call that has ended (also one from before a restart) the feed replays,
    sends the final state and closes; clients should stop reconnecting on that state.
    """
    node: Node = current_app.extensions["intellimeet.node"]
    after = _resume_point(query)
    session = node.registry.get(call_id)
    # Subscribe before reading the store: see the module docstring.
    listener = session.events.subscribe(f"feed of call {call_id}") if session else None
    try:
        if session is not None:
            state = {"state": session.state, "end_reason": session.end_reason}
        else:
            call = node.store.get_call(call_id)
            if call is None:
                raise ApiError(404, "not_found", f"no session {call_id}")
            state = {"state": call.state, "end_reason": call.end_reason}
        # In id order, not time order: a client cut mid-replay resumes from its last id.
        missed = sorted(node.store.segments(call_id, after_id=after), key=lambda s: s.id)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    feed = _feed(node, call_id, session, listener, missed, after, state, query)
    # A bare iterator, not a Response: spectree reads a Response's body whole to validate
    # it, which would never return for a live stream; an iterator it hands on untouched.
    return Stream(feed, listener), 200, STREAM_HEADERS


STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass events through unbuffered
}


class Stream(Iterator[bytes]):
    """The response body. The server closes it when the client leaves or the feed ends,
    which unsubscribes from the call even if not one event was sent."""

    def __init__(self, chunks: Generator[bytes, None, None], listener: Listener | None) -> None:
        self._chunks = chunks
        self._listener = listener

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        if self._listener is not None:
            self._listener.close()


def _feed(
    node: Node,
    call_id: str,
    session: CallSession | None,
    listener: Listener | None,
    missed: list[SegmentRow],
    after: int,
    state: dict[str, Any],
    query: EventsQuery,
) -> Generator[bytes, None, None]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    last_final = after
    for segment in missed:
        yield sse("final", views.stored_final(call_id, segment), segment.id)
        last_final = segment.id
    yield sse("state", {"call_id": call_id, **state})
    if listener is None or session is None or state["state"] in ENDED_STATES:
        if query.revision:
            yield from _revision(node, call_id)
        return
    try:
        yield from _live(node, call_id, session, listener, last_final, query.stats)
    finally:
        listener.close()
    if query.revision and not listener.cut_off:
        yield from _revision(node, call_id)


def _revision(node: Node, call_id: str) -> Iterator[bytes]:
    """After an ended call's last state: its post-call pass, waited for while it is pending
    or running (keepalives meanwhile), then one `revision` event with how it ended."""
    while True:
        changed = node.postcall.changed  # taken before the read: no finish slips between
        row = node.store.latest_pass(call_id)
        if row is None or row.state not in PASS_OPEN:
            break
        if not changed.wait(KEEPALIVE_S):
            yield b": keepalive\n\n"
    if row is not None:
        yield sse("revision", views.postcall(row) or {})


def _live(
    node: Node,
    call_id: str,
    session: CallSession,
    listener: Listener,
    last_final: int,
    stats: bool,
) -> Iterator[bytes]:
    """Live events until the call ends; stats and keepalives in the pauses between."""
    last_sent = time.monotonic()
    next_stats = last_sent + STATS_INTERVAL_S if stats else float("inf")
    saw_end = False
    while not listener.cut_off:
        wait = min(next_stats, last_sent + KEEPALIVE_S) - time.monotonic()
        try:
            event = listener.get(timeout=max(0.0, wait))
        except Empty:
            event = None
        else:
            if event is None and not listener.cut_off:  # the bus closed: the call is over
                if not saw_end:  # it closed before this feed saw the last state
                    yield sse("state", {"call_id": call_id, **_stored_state(node, call_id)})
                return
        now = time.monotonic()
        # A final whose id was replayed from the store is not sent twice.
        if event is not None and (event.id is None or event.id > last_final):
            last_final = event.id or last_final
            saw_end = saw_end or (
                isinstance(event.data, StateChange) and event.data.state in ENDED_STATES
            )
            yield sse(event.kind, views.event_data(call_id, event.data), event.id)
            last_sent = now
        if now >= next_stats:
            yield sse("stats", {"call_id": call_id, "stats": views.live_session(session)["stats"]})
            next_stats = now + STATS_INTERVAL_S
            last_sent = now
        elif now - last_sent >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_sent = now
    # Cut off: drop the stale backlog; the client resumes from its last final.
    yield sse(
        "cut_off",
        {"call_id": call_id, "reason": "fell too far behind; reconnect with Last-Event-ID"},
    )


def _stored_state(node: Node, call_id: str) -> dict[str, Any]:
    call = node.store.get_call(call_id)
    if call is None:  # pragma: no cover - calls are never deleted
        return {"state": "ended", "end_reason": None}
    return {"state": call.state, "end_reason": call.end_reason}
