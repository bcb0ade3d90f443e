"""The node's shared vocabulary: the words every layer uses for the same things.

One home, at the bottom of the import graph (it imports nothing of the node's own), so the
ASR engine, the wire protocol, the store, the calls layer and the API all speak of a
``Segment``, a ``Speaker`` or a ``CallState`` in the same type instead of five dict shapes
and bare strings compared by spelling. Each ``StrEnum`` member *is* its string, so JSON,
the database and the wire keep the values they always had.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class CallState(StrEnum):
    LISTENING = "listening"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    ENDED = "ended"
    FAILED = "failed"  # never connected, because connecting went wrong
    INTERRUPTED = "interrupted"  # left open by a node that was killed; closed at its restart


class Mode(StrEnum):
    LISTEN = "listen"
    DIAL = "dial"


class Speaker(StrEnum):
    LOCAL = "local"  # this node's microphone
    REMOTE = "remote"  # the peer's


class Task(StrEnum):
    TRANSCRIBE = "transcribe"  # keep the spoken language
    TRANSLATE = "translate"  # into English (multilingual models only)


@dataclass(frozen=True, slots=True)
class Segment:
    """One final piece of transcript, from the decoder's result to the wire and the store.

    ``start``/``end`` are seconds into the speaker's stream. The decoder fills the text, the
    times and Whisper's own confidence figures; the call gives it its ``speaker`` and
    running ``number`` (unique per call and speaker, which makes a re-sent segment
    idempotent) before it is stored or sent.
    """

    start: float
    end: float
    text: str
    language: str | None = None
    task: Task | None = None  # None when the peer did not say
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    speaker: Speaker | None = None
    number: int | None = None

    def numbered(self, speaker: Speaker, number: int) -> Segment:
        return replace(self, speaker=speaker, number=number)
