"""Rendering a transcript as JSON, plain text, SRT or WebVTT.

Whatever a row holds, a renderer answers: texts are made one line again (``clean_text``,
which also covers rows stored before texts were cleaned on arrival) and escaped for the
format, and times outside a clock's range are clamped, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.api.cues import Cue, split_cues
from service.calls.peer import clean_text
from service.store.models import SegmentRow

SPEAKER_LABELS = {"local": "Local", "remote": "Remote"}  # how exports name the speakers


def next_cursor(segments: Sequence[SegmentRow], since: int | None) -> str:
    """A polling client's cursor: the highest segment id it has. A string, because it is
    opaque to clients (today it is also the live feed's event id, which is text on the wire)."""
    return str(max((s.id for s in segments), default=since or 0))


MAX_CLOCK_S = 100 * 3600 - 0.001  # 99:59:59.999, the widest HH:MM:SS clock


def _clock(seconds: float, sep: str) -> str:
    if not math.isfinite(seconds):
        seconds = 0.0 if math.isnan(seconds) or seconds < 0 else MAX_CLOCK_S
    ms = round(min(max(seconds, 0.0), MAX_CLOCK_S) * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def as_text(segments: Sequence[SegmentRow]) -> str:
    return "".join(
        f"[{_clock(s.start_s, '.')}] {SPEAKER_LABELS[s.speaker]}: {clean_text(s.text)}\n"
        for s in segments
    )


def _cues(segments: Sequence[SegmentRow], labelled: bool) -> list[tuple[str, Cue]]:
    """(speaker, cue) in time order. A segment with word timings (the final revision)
    becomes cues that follow its words (service/api/cues.py); one without, one cue.
    ``labelled``: the first line starts with the speaker's label (SRT), so it is shorter."""
    out: list[tuple[str, Cue]] = []
    for s in segments:
        label = SPEAKER_LABELS[s.speaker]
        if s.words:
            reserve = len(label) + 2 if labelled else 0
            out.extend((s.speaker, cue) for cue in split_cues(s.words, reserve))
        else:
            out.append((s.speaker, Cue(s.start_s, s.end_s, (s.text,))))
    return sorted(out, key=lambda pair: pair[1].start)


def as_srt(segments: Sequence[SegmentRow]) -> str:
    blocks = [
        f"{i}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n"
        f"{SPEAKER_LABELS[speaker]}: " + "\n".join(_srt_text(line) for line in cue.lines) + "\n"
        for i, (speaker, cue) in enumerate(_cues(segments, labelled=True), 1)
    ]
    return "\n".join(blocks)


def _srt_text(text: str) -> str:
    """One line that no SRT reader takes for markup or a timing line."""
    text = clean_text(text).replace("-->", "->")
    return text.replace("<", "\u2039").replace(">", "\u203a").replace("{", "(").replace("}", ")")


def _vtt_escape(text: str) -> str:
    """Cue text per WebVTT: one line (a blank one would end the cue), `&`, `<` and `>` as
    character references, so no `-->` or tag is left."""
    text = clean_text(text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_vtt(segments: Sequence[SegmentRow]) -> str:
    cues = [
        f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n"
        + "\n".join(f"<v {SPEAKER_LABELS[speaker]}>{_vtt_escape(line)}" for line in cue.lines)
        + "\n"
        for speaker, cue in _cues(segments, labelled=False)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
