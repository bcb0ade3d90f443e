"""Rendering a transcript as JSON, plain text, SRT or WebVTT."""

from __future__ import annotations

from collections.abc import Sequence

from service.store.models import Segment

SPEAKER_LABELS = {"local": "Local", "remote": "Remote"}


def segment_json(s: Segment) -> dict:
    return {
        "id": s.id,
        "speaker": s.speaker,
        "start": s.start_s,
        "end": s.end_s,
        "text": s.text,
        "language": s.language,
        "task": s.task,
        "avg_logprob": s.avg_logprob,
        "no_speech_prob": s.no_speech_prob,
        "compression_ratio": s.compression_ratio,
        "created_at": s.created_at.isoformat(),
    }


def next_cursor(segments: Sequence[Segment], since: int | None) -> str:
    """A polling client's cursor: the highest segment id it has. A string, because it is
    opaque to clients (today it is also the live feed's event id, which is text on the wire)."""
    return str(max((s.id for s in segments), default=since or 0))


def final_event(s: Segment) -> dict:
    """A stored final as the live feed replays it: the same fields a live final carries.
    `utterance` (what ties partials to their final) is not stored: a live thing only."""
    return {
        "call_id": s.call_id,
        "id": s.id,
        "speaker": s.speaker,
        "utterance": None,
        "number": s.number,
        "text": s.text,
        "start": s.start_s,
        "end": s.end_s,
        "language": s.language,
        "task": s.task,
    }


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def as_text(segments: Sequence[Segment]) -> str:
    return "".join(
        f"[{_clock(s.start_s, '.')}] {SPEAKER_LABELS[s.speaker]}: {s.text}\n" for s in segments
    )


def as_srt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{i}\n{_clock(s.start_s, ',')} --> {_clock(s.end_s, ',')}\n"
        f"{SPEAKER_LABELS[s.speaker]}: {s.text}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_vtt(segments: Sequence[Segment]) -> str:
    cues = [
        f"{_clock(s.start_s, '.')} --> {_clock(s.end_s, '.')}\n"
        f"<v {SPEAKER_LABELS[s.speaker]}>{_vtt_escape(s.text)}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
