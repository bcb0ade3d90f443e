"""How the API shows a call and its events: one place, for live and stored calls alike.

A live call is a ``CallSession`` (with live counters); an ended one is a ``Call`` row. Both
render to the same JSON here, as do finals, whether they come live off a call's event bus or
are replayed from the store after a reconnect, so a client never sees two shapes of one thing.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from service.calls.events import Final, Partial, StateChange
from service.calls.session import CallSession
from service.store.models import Call, SegmentRow, TranscriptPass
from service.vocab import Segment


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float | int):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat()


def _call_fields(**fields: Any) -> dict[str, Any]:
    """The fields every session view has, in one order."""
    keys = (
        "id",
        "node_id",
        "mode",
        "state",
        "address",
        "peer",
        "input",
        "output",
        "language",
        "transcribe",
        "task",
        "created_at",
        "connected_at",
        "ended_at",
        "end_reason",
        "recording",
        "stats",
    )
    return {key: fields[key] for key in keys}


def live_session(session: CallSession) -> dict[str, Any]:
    o = session.options
    t = session.times
    transcript = session.transcript
    return _call_fields(
        id=session.id,
        node_id=session.ctx.node_id,
        mode=session.mode,
        state=session.state,
        address=session.local_address,
        peer=session.peer_address,
        input=o.input,
        output=o.output,
        language=o.language,
        transcribe="after" if o.transcribe_after else o.transcribe,
        task=o.task,
        created_at=_iso(t.created),
        connected_at=_iso(t.connected),
        ended_at=_iso(t.ended),
        end_reason=session.end_reason,
        recording=_live_recording(session),
        stats={
            **session.counters(),
            "rejected_connections": session.rejected_connections,
            "segments": {str(k): v for k, v in transcript.stored.items()},
            "segments_refused": transcript.refused,
            "asr_pending": transcript.pending,
            "in_speech": transcript.in_speech,
            "input": session.source.stats,
            "output": session.sink.stats,
            "link": _link(session),
            "quality": _quality(session),
        },
    )


def stored_session(call: Call, segments: dict[str, int]) -> dict[str, Any]:
    """An ended (or interrupted) call as the store keeps it; ``segments``, its stored
    count per speaker (one query for a whole list: Store.segment_counts)."""
    return _call_fields(
        id=call.id,
        node_id=call.node_id,
        mode=call.mode,
        state=call.state,
        address=call.local_address,
        peer=call.peer_address,
        input=call.input,
        output=call.output,
        language=call.language,
        transcribe=call.transcribe_field,
        task=call.task,
        created_at=_iso(call.created_at),
        connected_at=_iso(call.connected_at),
        ended_at=_iso(call.ended_at),
        end_reason=call.end_reason,
        recording={
            "local": call.record,
            "remote_records": call.peer_records,
            "stopped": call.recording_stopped,
            "deleted_at": _iso(call.recording_deleted_at),
        },
        stats={
            "frames_sent": call.frames_sent,
            "frames_received": call.frames_received,
            "bytes_sent": call.bytes_sent,
            "bytes_received": call.bytes_received,
            "rejected_connections": call.rejected_connections,
            "segments": segments,
            "segments_refused": call.segments_refused,
        },
    )


def _live_recording(session: CallSession) -> dict[str, Any]:
    """Whether each side records (the peer's from its hello; None: it did not say), why
    this side's recording stopped early (``disk_full``...), and its counters."""
    recorder = session.recorder
    hello = session.peer_hello
    out: dict[str, Any] = {
        "local": session.options.record,
        "remote_records": hello.records if hello is not None else None,
        "stopped": recorder.stopped if recorder is not None else None,
        "deleted_at": _iso(session.recording_deleted_at),
    }
    if recorder is not None:
        # Kept, and still being written (a copy whose writer failed says why in stats).
        out["lossless"] = recorder.lossless and recorder.counters.lossless_stopped is None
        out["stats"] = asdict(recorder.counters)
    return out


def _link(session: CallSession) -> dict[str, Any] | None:
    """Keepalive round-trip times and whether the link is encrypted (live only)."""
    link = session.link
    if link is None:
        return None
    return {"tls": link.tls, "send_stalls": link.stats.send_stalls, **link.stats.keepalive()}


def _quality(session: CallSession) -> dict[str, Any] | None:
    """The call-quality figures a person checks first, gathered from the link, the
    playout buffer and the devices (the details stay in ``link``/``input``/``output``)."""
    link = session.link
    connected = session.times.connected
    if link is None or connected is None:
        return None
    seconds = max(1e-3, (session.times.ended or time.time()) - connected)
    playout = session.sink.playout.figures()
    return {
        "codec": session.codec,
        "send_kbps": round(link.stats.bytes_sent * 8 / seconds / 1000, 1),
        "receive_kbps": round(link.stats.bytes_received * 8 / seconds / 1000, 1),
        "rtt_ms": link.stats.keepalive()["rtt_ms_avg"],
        "jitter_ms": playout.jitter_ms,
        "playout_delay_ms": playout.target_ms,
        "playout_depth_ms": playout.depth_ms,
        "one_way_latency_ms": playout.latency_ms,
        "frames_concealed": playout.frames_concealed,
        "frames_dropped": playout.frames_dropped_late
        + playout.frames_dropped_overflow
        + playout.frames_dropped_catchup,
        "playout_underruns": playout.underruns + session.sink.device_underflows,
        "capture_overruns": session.source.overruns
        + (session.media.frames_dropped_unsent if session.media else 0),
    }


# -- events -------------------------------------------------------------------------------


def segment(row: SegmentRow) -> dict[str, Any]:
    """A stored segment in the transcript's JSON; one of the final revision also has its
    words, whether the live pass missed it, and whether it is the live pass's own (kept
    where the recording had lost the audio)."""
    extra = {"live_missed": row.live_missed, "from_live": row.from_live, "words": row.words or []}
    return {
        "id": row.id,
        "speaker": row.speaker,
        "start": row.start_s,
        "end": row.end_s,
        "text": row.text,
        "language": row.language,
        "task": row.task,
        "avg_logprob": row.avg_logprob,
        "no_speech_prob": row.no_speech_prob,
        "compression_ratio": row.compression_ratio,
        "created_at": row.created_at.isoformat(),
        "revision": row.revision,
        **(extra if row.revision == "final" else {}),
    }


def postcall(row: TranscriptPass | None) -> dict[str, Any] | None:
    """A post-call pass (service/calls/postcall.py), or None when the call never had one."""
    if row is None:
        return None
    return {
        "id": row.id,
        "call_id": row.call_id,
        "revision": row.revision,
        "state": row.state,
        "model": row.model,
        "progress": row.progress,
        "error": row.error,
        "segments": row.segments,
        "live_missed": row.missed,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


def final(call_id: str, event: Final) -> dict[str, Any]:
    """A final as the live feed sends it, live or replayed. `utterance` (what ties partials
    to their final) is live only: None when replayed from the store."""
    s: Segment = event.segment
    return {
        "call_id": call_id,
        "id": event.id,
        "speaker": s.speaker,
        "utterance": event.utterance,
        "number": s.number,
        "text": s.text,
        "start": s.start,
        "end": s.end,
        "language": s.language,
        "task": s.task,
    }


def stored_final(call_id: str, row: SegmentRow) -> dict[str, Any]:
    return final(call_id, Final(row.to_segment(), row.id))


def event_data(call_id: str, data: StateChange | Partial | Final) -> dict[str, Any]:
    """Any live event's payload."""
    if isinstance(data, Final):
        return final(call_id, data)
    return {"call_id": call_id, **asdict(data)}
