"""Subtitle cues from word timings: what SRT and WebVTT show of a final revision.

A segment of Whisper's long-form decoding can run to 30 s and hundreds of characters; as
one cue it would fill the screen and stay there. Common subtitle practice (the BBC's and
Netflix's guidelines, among others) is what the limits below follow: at most two lines of
at most 42 characters, a cue on screen at most about 7 s and at least about 1 s, and a new
cue where the speaker ends a sentence or pauses rather than in the middle of a phrase.

Pure functions of the words (``{word, start, end}`` dicts, as the final revision stores
them), so they are tested as they are (tests/test_cues.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_S = 7.0
MIN_CUE_S = 1.0
PAUSE_S = 0.5  # a gap between words this long ends a cue (once it is MIN_CUE_S long)
SHORT_PAUSE_S = 0.25  # a place to cut a cue that is full, besides punctuation
SENTENCE_END = (".", "?", "!", "\u2026", "\u3002", "\uff1f", "\uff01")  # and CJK forms
CLAUSE_END = (*SENTENCE_END, ",", ";", ":", "\uff0c", "\u3001")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Word:
    text: str
    start: float
    end: float


def split_cues(words: Sequence[Mapping[str, Any]], reserve: int = 0) -> list[Cue]:
    """Cues for one speaker's words, in order. ``reserve``: characters the first line
    gives up to a label the renderer puts before it (``Local: ``)."""
    items = _words(words)
    groups: list[list[_Word]] = []
    group: list[_Word] = []
    for w in items:
        if group:
            last = group[-1]
            boundary = last.text.endswith(SENTENCE_END) or w.start - last.end >= PAUSE_S
            if boundary and last.end - group[0].start >= MIN_CUE_S:
                groups.append(group)
                group = []
            elif not _fits([*group, w], reserve):
                keep, carry = _cut(group)
                groups.append(keep)
                group = carry if _fits([*carry, w], reserve) else []
                if not group and carry:
                    groups.append(carry)
        group.append(w)
    if group:
        groups.append(group)
    return _timed(groups, reserve)


def wrap(texts: Sequence[str], reserve: int = 0) -> tuple[str, ...] | None:
    """The words as at most MAX_LINES lines of at most MAX_LINE_CHARS (the first less
    ``reserve``), split where the two lines come out most even; None when they do not fit.
    One word longer than a line is a line of its own: there is nowhere to break it."""
    one = " ".join(texts)
    if reserve + len(one) <= MAX_LINE_CHARS or len(texts) == 1:
        return (one,)
    best: tuple[int, tuple[str, str]] | None = None
    for i in range(1, len(texts)):
        first, second = " ".join(texts[:i]), " ".join(texts[i:])
        longest = max(reserve + len(first), len(second))
        if longest <= MAX_LINE_CHARS and (best is None or longest < best[0]):
            best = (longest, (first, second))
    return None if best is None else best[1]


def _words(words: Sequence[Mapping[str, Any]]) -> list[_Word]:
    out = []
    for w in words:
        text = " ".join(str(w.get("word", "")).split())
        if not text:
            continue
        start = float(w.get("start", 0.0))
        out.append(_Word(text, start, max(start, float(w.get("end", start)))))
    return out


def _fits(group: list[_Word], reserve: int) -> bool:
    if group[-1].end - group[0].start > MAX_CUE_S and len(group) > 1:
        return False
    return wrap([w.text for w in group], reserve) is not None


def _cut(group: list[_Word]) -> tuple[list[_Word], list[_Word]]:
    """Where to end a full cue: after its last clause end or short pause in its second
    half, so a phrase stays whole; at its end when there is none."""
    for i in range(len(group) - 1, len(group) // 2 - 1, -1):
        if i == 0:
            break
        before, after = group[i - 1], group[i]
        if before.text.endswith(CLAUSE_END) or after.start - before.end >= SHORT_PAUSE_S:
            return group[:i], group[i:]
    return group, []


def _timed(groups: list[list[_Word]], reserve: int) -> list[Cue]:
    """Times from the words; a cue shorter than MIN_CUE_S is held longer, up to the next."""
    cues = []
    for i, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        if end - start < MIN_CUE_S:
            following = groups[i + 1][0].start if i + 1 < len(groups) else float("inf")
            end = max(end, min(start + MIN_CUE_S, following))
        lines = wrap([w.text for w in group], reserve) or (" ".join(w.text for w in group),)
        cues.append(Cue(start, end, lines))
    return cues
