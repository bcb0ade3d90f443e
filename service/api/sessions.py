"""/sessions: start, inspect, list and end calls; read their transcripts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from spectree import Response as Resp

from service.api import formats, views
from service.api.errors import ApiError
from service.api.schemas import (
    CreateSession,
    ErrorBody,
    SessionList,
    SessionOut,
    SessionsQuery,
    TranscriptQuery,
)
from service.api.spec import spec
from service.calls.options import CallOptions
from service.calls.registry import CallError
from service.node import Node
from service.store.db import FINAL, LIVE
from service.vocab import Task

bp = Blueprint("sessions", __name__)
TAG = "sessions"
RETRY_AFTER_S = 10  # a full node frees a place when a call ends; calls last minutes


def _node() -> Node:
    return current_app.extensions["intellimeet.node"]


def _snapshot(call_id: str) -> dict[str, Any]:
    node = _node()
    live = node.registry.get(call_id)
    if live is not None:
        return views.live_session(live)
    call = node.store.get_call(call_id)
    if call is None:
        raise ApiError(404, "not_found", f"no session {call_id}")
    body = views.stored_session(call, node.store.segment_counts([call.id])[call.id])
    body["postcall"] = views.postcall(node.store.latest_pass(call_id))  # its progress
    return body


@bp.post("/sessions")
@spec.validate(
    json=CreateSession,
    resp=Resp(
        HTTP_201=SessionOut,
        HTTP_400=ErrorBody,
        HTTP_409=ErrorBody,
        HTTP_422=ErrorBody,
        HTTP_503=ErrorBody,
    ),
    tags=[TAG],
)
def create_session(json: CreateSession):
    """Listen for a peer, or dial one."""
    node = _node()
    options = CallOptions(
        input=json.input,
        output=json.output,
        language=json.language,
        transcribe=json.transcribe is True,
        transcribe_after=json.transcribe == "after",
        task=Task(json.task),
        record=node.settings.record if json.record is None else json.record,
    )
    try:
        if json.mode == "listen":
            session = node.registry.listen(json.port, options)
        else:
            # CreateSession requires both for a dial (its validator), so neither is None.
            assert json.peer is not None and json.token is not None
            session = node.registry.dial(json.peer, json.token, options)
    except CallError as exc:
        # 503 (the node is at IM_MAX_CALLS) is temporary: say when to look again.
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
        raise ApiError(exc.status, exc.code, exc.message, headers=headers) from None
    body = views.live_session(session)
    if session.mode == "listen":
        body["token"] = session.token  # shown once: the peer dials with it
    return jsonify(body), 201


@bp.get("/sessions")
@spec.validate(query=SessionsQuery, resp=Resp(HTTP_200=SessionList), tags=[TAG])
def list_sessions(query: SessionsQuery):
    """All calls, newest first (live ones of this node with live counters): of every node
    sharing the database, or of `node` only. Another node's live call shows as stored."""
    node = _node()
    out = []
    calls = node.store.list_calls(node=query.node)
    counts = node.store.segment_counts([c.id for c in calls if node.registry.get(c.id) is None])
    for call in calls:
        live = node.registry.get(call.id)
        out.append(
            views.live_session(live)
            if live is not None
            else views.stored_session(call, counts[call.id])
        )
    return jsonify({"sessions": out})


@bp.get("/sessions/<call_id>")
@spec.validate(resp=Resp(HTTP_200=SessionOut, HTTP_404=ErrorBody), tags=[TAG])
def get_session(call_id: str):
    """State, peer, times, end reason and counters of one call."""
    return jsonify(_snapshot(call_id))


@bp.delete("/sessions/<call_id>")
@spec.validate(resp=Resp(HTTP_200=SessionOut, HTTP_404=ErrorBody, HTTP_409=ErrorBody), tags=[TAG])
def end_session(call_id: str):
    """Hang up: the last words are transcribed and sent, then the peer is told why."""
    node = _node()
    live = node.registry.get(call_id)
    if live is None:
        snapshot = _snapshot(call_id)  # 404 when unknown
        raise ApiError(409, "not_live", f"session {call_id} already {snapshot['state']}")
    live.end("hangup")
    return jsonify(views.live_session(live))


@bp.get("/sessions/<call_id>/transcript")
# No 200 model: spectree would validate (and re-type as JSON) the text, SRT and WebVTT
# bodies too. The JSON shape is written out in the docstring, which the document shows.
@spec.validate(
    query=TranscriptQuery,
    resp=Resp(HTTP_200=(None, "the transcript, as `format` asks"), HTTP_404=ErrorBody),
    tags=[TAG],
)
def transcript(call_id: str, query: TranscriptQuery):
    """Both speakers in time order: `format` = json | text | srt | vtt; `revision` = live |
    final (default: final once the post-call pass stored it, else live).

    JSON: `{"call_id", "state", "revision", "segments": [{"id", "speaker", "start", "end",
    "text", "language", "avg_logprob", "no_speech_prob", "compression_ratio", "created_at",
    "revision"}], "next_cursor"}`; a final segment also has `live_missed` (the live pass
    never produced it), `from_live` (kept from the live pass: the recording had lost that
    audio) and `words` (`[{"word", "start", "end", "probability"}]`), and its
    SRT and WebVTT cues follow the words (two lines of 42 characters, 1 to 7 s).
    Polling: pass `since=<next_cursor>` to get only the segments stored since (segment ids
    grow in commit order, so nothing is skipped or repeated); `next_cursor` is the highest
    id returned, or the cursor given when there is none new.
    """
    snapshot = _snapshot(call_id)
    store = _node().store
    revision = query.revision or (FINAL if store.has_final(call_id) else LIVE)
    segments = store.segments(call_id, after_id=query.since, revision=revision)
    if query.format == "json":
        return jsonify(
            {
                "call_id": call_id,
                "state": snapshot["state"],
                "revision": revision,
                "segments": [views.segment(s) for s in segments],
                "next_cursor": formats.next_cursor(segments, query.since),
            }
        )
    render, mimetype = {
        "text": (formats.as_text, "text/plain"),
        "srt": (formats.as_srt, "application/x-subrip"),
        "vtt": (formats.as_vtt, "text/vtt"),
    }[query.format]
    return Response(render(segments), mimetype=mimetype, content_type=f"{mimetype}; charset=utf-8")
