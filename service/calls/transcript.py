"""One call's transcript: both speakers' segments, from the transcriber or the peer, to the
store, the live feed and the peer.

The rule everything here keeps: **stored first**. A segment is committed before anyone is
told of it; only then is it published (with its row id as the live feed's event id) and,
for our own speaker, sent to the peer. A store that fails stops the call (``on_failed``):
a call that cannot keep what is said must not go on as if it did.

Each node transcribes its own speaker (clean, uncompressed audio, next to the microphone)
and sends its finals to the peer, so both nodes hold the whole conversation. A peer that
says it does not transcribe is transcribed here from what it sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from service.asr.stream import StreamTranscriber
from service.calls.context import CallContext
from service.calls.events import EventBus, Final, Partial
from service.calls.options import CallOptions
from service.calls.peer import check_times, clean_text
from service.frames import FRAME_SAMPLES
from service.ratelimit import RateLimitedLog
from service.transport import protocol as p
from service.vocab import Segment, Speaker

log = logging.getLogger(__name__)


class CallTranscript:
    def __init__(
        self,
        ctx: CallContext,
        call_id: str,
        options: CallOptions,
        events: EventBus,
        warn: RateLimitedLog,
    ) -> None:
        self._ctx = ctx
        self._call_id = call_id
        self._options = options
        self._events = events
        self._warn = warn
        self._streams: dict[Speaker, StreamTranscriber] = {}
        self._numbers = {Speaker.LOCAL: 0, Speaker.REMOTE: 0}
        self._last_remote_start: float | None = None
        self.stored = {Speaker.LOCAL: 0, Speaker.REMOTE: 0}
        self.refused = 0  # peer segments with impossible times (never stored)
        self.send: Callable[[p.Transcript], None] | None = None  # our finals to the peer
        self.on_failed: Callable[[str], None] = lambda reason: None

    @property
    def transcribing(self) -> bool:
        return self._options.transcribe and self._ctx.engine is not None

    def start(self, transcribe_peer: bool) -> None:
        """Begin transcribing our speaker, and the peer too when it will not itself."""
        if not self.transcribing:
            return
        self._streams[Speaker.LOCAL] = self._stream(Speaker.LOCAL)
        if transcribe_peer:
            self._streams[Speaker.REMOTE] = self._stream(Speaker.REMOTE)

    def transcribes(self, speaker: Speaker) -> bool:
        return speaker in self._streams

    def _stream(self, speaker: Speaker) -> StreamTranscriber:
        engine = self._ctx.engine
        assert engine is not None
        settings = self._ctx.settings
        return StreamTranscriber(
            engine,
            self._ctx.segmenter,
            on_final=lambda no, segments: self._on_final(speaker, no, segments),
            on_partial=lambda no, text, start, end: self._events.publish(
                Partial(speaker, no, text, start, end)
            ),
            language=self._options.language,
            task=self._options.task,
            partial_interval_s=settings.partial_interval_s,
            label=f"call {self._call_id} ({speaker})",
            prompt_chars=settings.asr_prompt_chars,
        )

    def feed(self, speaker: Speaker, pcm: np.ndarray) -> None:
        stream = self._streams.get(speaker)
        if stream is not None and pcm.shape == (FRAME_SAMPLES,):
            stream.push(pcm)

    # -- ending -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self._streams.values())

    @property
    def in_speech(self) -> bool:
        return any(s.in_speech for s in self._streams.values())

    def flush(self) -> None:
        """Close every open utterance (the call is ending): its final is still coming."""
        for stream in self._streams.values():
            stream.flush()

    def withdraw(self) -> int:
        """Stop the live pass: what is still queued is never decoded, nothing more is
        stored (the post-call pass transcribes it from the recording); how many finals."""
        return sum(stream.withdraw() for stream in self._streams.values())

    def wait_idle(self, deadline: float) -> None:
        for stream in self._streams.values():
            stream.idle.wait(max(0.0, deadline - time.monotonic()))

    def release(self) -> None:
        """The call's live pass is over: its finals stop counting as load in admission
        (asr/headroom.py), so a call that just ended does not turn the next one away."""
        engine = self._ctx.engine
        if engine is not None:
            for stream in self._streams.values():
                engine.forget(stream)

    # -- segments -----------------------------------------------------------------------

    def _on_final(self, speaker: Speaker, utterance: int, segments: list[Segment]) -> None:
        for segment in segments:
            number = self._numbers[speaker]
            self._numbers[speaker] += 1
            numbered = replace(segment, text=clean_text(segment.text)).numbered(speaker, number)
            if not self._store(numbered, utterance):
                return
            if speaker is Speaker.LOCAL and self.send is not None:
                self.send(p.Transcript.of(numbered))

    def accept_remote(self, t: p.Transcript, call_s: float) -> bool:
        """Keep a segment the peer transcribed, if its times can be right (``call_s``: how
        long the call has been connected here); False only when the store failed."""
        if Speaker.REMOTE in self._streams:
            return True  # we transcribe the peer ourselves; it said it would not
        wrong = check_times(t.start, t.end, call_s, self._last_remote_start)
        if wrong is not None:
            self.refused += 1
            self._warn.warning(
                "times", "call %s: refused peer segment %d: %s", self._call_id, t.no, wrong
            )
            return True
        self._last_remote_start = t.start
        segment = t.segment()
        return self._store(replace(segment, text=clean_text(segment.text)))

    def _store(self, segment: Segment, utterance: int | None = None) -> bool:
        """Commit, then (only then) publish with the row id as the event id."""
        try:
            row_id = self._ctx.store.add_segment(self._call_id, segment)
        except SQLAlchemyError as exc:
            why = self._ctx.store.write_error or type(exc).__name__  # the store's own account
            log.error("call %s: cannot store its transcript (%s)", self._call_id, why)
            self.on_failed(f"storage_failed: {why}")
            return False
        if row_id is None:
            return True  # delivered twice: stored and published the first time
        assert segment.speaker is not None
        self.stored[segment.speaker] += 1
        self._events.publish(Final(segment, row_id, utterance))
        return True
