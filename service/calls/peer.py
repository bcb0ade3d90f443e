"""What a connected peer may send, and what its words become once they arrive.

A peer that proved the call token is still a stranger: its sequence numbers, timestamps,
texts and its pace are whatever it chooses. Everything here turns that into bounded data:

- **Pace.** A peer speaks in real time: 50 audio frames a second and a few transcript
  segments a minute. ``PeerBudget`` allows that pace, plus a burst (a TCP stall delivers a
  backlog at once), in proportion to how long the call has been connected, and caps what
  one call may store in all; a node-wide bucket caps remote segments across calls; messages
  that have no place in a connected call (a hello, an auth) are allowed a few. A peer
  past its budget has its call ended as ``peer_flood``: nothing it sends can make the node
  do or store more than a real conversation would.
- **Times.** A segment's start and end must be finite, ordered and inside the call
  (``check_times``); a segment that is not is refused, counted, and the call goes on.
- **Text** is data: ``clean_text`` removes control characters (line breaks, escapes,
  bidirectional overrides) once, on arrival, so no export can be forged from it; renderers
  apply it again to rows stored before it existed.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from service.frames import FRAME_MS
from service.ratelimit import TokenBucket

FRAMES_PER_S = 1000 / FRAME_MS

# ANSI/VT escape sequences (CSI, OSC and two-character escapes), removed whole so that no
# "[31m" is left behind once the ESC itself goes.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Format characters that change how text around them is shown: bidirectional overrides and
# isolates (U+202A-202E, U+2066-2069) and the BOM. Joiners (U+200C/200D), which some
# scripts need, are kept.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\ufeff]")
_BREAKS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x85")  # control characters that separate words


def clean_text(text: str) -> str:
    """One line of printable text: escapes and control characters gone, every kind of line
    break (``\\n``, ``\\r``, U+0085, U+2028, U+2029) and tab made a space, runs of spaces
    folded. Idempotent."""
    text = _BIDI.sub("", _ESCAPES.sub("", text))
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Zl", "Zp") or ch in _BREAKS:
            out.append(" ")
        elif category != "Cc":
            out.append(ch)
    return " ".join("".join(out).split())


# A real conversation, generously: how much a peer may send beyond real-time pace.
AUDIO_BURST_FRAMES = 500  # 10 s of frames at once (a TCP stall is cut at 5 s anyway)
AUDIO_PACE = 1.25  # x real time, sustained
SEGMENT_BURST = 50
SEGMENTS_PER_S = 2.0  # one segment a second of speech would already be a fast talker
TEXT_BURST_CHARS = 8_000
TEXT_CHARS_PER_S = 60.0  # fast speech is about 25
STRAY_BURST = 20  # messages that have no place mid-call (a hello, an auth): none from a real peer
STRAY_PER_S = 1.0
CALL_MAX_SEGMENTS = 50_000  # a 24-hour call at a segment every 2 s
CALL_MAX_TEXT_CHARS = 8_000_000
NODE_SEGMENTS_PER_S = 100.0  # remote segments across all calls, and the burst below
NODE_SEGMENT_BURST = 500
TIME_SLACK_S = 30.0  # a segment may end this far past our own count of the call's time
MAX_SEGMENT_S = 120.0  # longer than any utterance a node cuts (IM_MAX_UTTERANCE_S <= 60)


@dataclass
class PeerBudget:
    """What one connected peer has sent against what its time on the call allows."""

    connected_at: float  # on ``clock``
    node_segments: TokenBucket
    clock: Callable[[], float] = time.monotonic
    frames: int = 0
    segments: int = 0
    text_chars: int = 0
    strays: int = 0

    def _elapsed(self) -> float:
        return max(0.0, self.clock() - self.connected_at)

    def audio(self) -> str | None:
        """Count one audio frame; why the peer is flooding, or None."""
        self.frames += 1
        if self.frames > AUDIO_BURST_FRAMES + AUDIO_PACE * FRAMES_PER_S * self._elapsed():
            return f"audio faster than real time ({self.frames} frames)"
        return None

    def stray(self) -> str | None:
        """Count one message that has no place in a connected call; why it floods, or None."""
        self.strays += 1
        if self.strays > STRAY_BURST + STRAY_PER_S * self._elapsed():
            return f"messages that have no place mid-call ({self.strays})"
        return None

    def segment(self, text: str) -> str | None:
        """Count one transcript segment of ``text``; why the peer is flooding, or None."""
        self.segments += 1
        self.text_chars += len(text)
        elapsed = self._elapsed()
        if self.segments > min(CALL_MAX_SEGMENTS, SEGMENT_BURST + SEGMENTS_PER_S * elapsed):
            return f"transcript segments faster than speech ({self.segments})"
        text_allowed = TEXT_BURST_CHARS + TEXT_CHARS_PER_S * elapsed
        if self.text_chars > min(CALL_MAX_TEXT_CHARS, text_allowed):
            return f"transcript text faster than speech ({self.text_chars} characters)"
        if not self.node_segments.take():
            return "transcript segments past this node's budget for all calls"
        return None


def check_times(start: float, end: float, call_s: float, last_start: float | None) -> str | None:
    """Why a segment's times cannot be right, or None. ``call_s``: how long the call has
    been connected on our clock; ``last_start``: the start of the peer's previous segment
    (a speaker's segments come in time order)."""
    if not (0.0 <= start <= end):  # also False for NaN
        return f"start {start!r} and end {end!r} are not 0 <= start <= end"
    if end > call_s + TIME_SLACK_S:
        return f"end {end:.3g} s lies past the call's {call_s:.0f} s"
    if end - start > MAX_SEGMENT_S:
        return f"a segment of {end - start:.3g} s is longer than any utterance"
    if last_start is not None and start < last_start:
        return f"start {start:.3f} s comes before the previous segment's {last_start:.3f} s"
    return None
