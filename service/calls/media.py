"""A connected call's media: capture fanned out to the peer and to our transcriber, and
what the peer sends routed to the playout buffer, our transcriber of the peer, the
transcript, or the end of the call.

Capture fans out: each 20 ms frame from the source goes to the transcriber *and* into a
small outgoing queue that a sender greenlet drains onto the link, so neither waits for the
other: a stalled or closed link delays nothing of our own speaker's transcript (the link's
send stall ends the call within seconds; until then the queue keeps its newest frames,
every drop counted).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import gevent
import numpy as np
from gevent.event import Event

from service.audio.codecs import CodecError, Decoder, Encoder, make_decoder, make_encoder
from service.audio.sinks import Sink
from service.audio.sources import DeviceLost, Source
from service.calls.peer import PeerBudget, clean_text
from service.calls.transcript import CallTranscript
from service.codec_table import Codec
from service.config import Settings
from service.frames import FRAME_SAMPLES
from service.ratelimit import RateLimitedLog
from service.recordings import CallRecorder
from service.transport import protocol as p
from service.transport.link import Link, LinkClosed
from service.vocab import Speaker

log = logging.getLogger(__name__)

# A connected peer sends an audio frame every 20 ms, silence included, so this long
# without a single message means it is gone even if TCP has not noticed (a partition,
# a frozen process).
PEER_SILENCE_S = 5.0
OUTGOING_FRAMES = 25  # 0.5 s of capture waiting for the link; older frames are dropped
OPUS_COMPLEXITY = 5  # half libopus's default cost, same SNR on speech (docs/benchmarks.md)


def make_call_encoder(codec: str, settings: Settings) -> Encoder:
    """What this side sends with: Opus as configured, or PCM16. No in-band FEC: TCP
    delivers every frame in order, so redundancy for a lost packet is bits that can never
    be used; a late frame is concealed by the playout buffer."""
    if codec != "opus":
        return make_encoder("pcm16")
    return make_encoder(
        "opus",
        bitrate=settings.opus_bitrate,
        frame_ms=settings.opus_frame_ms,
        fec=False,
        complexity=OPUS_COMPLEXITY,
    )


class Media:
    def __init__(
        self,
        call_id: str,
        link: Link,
        source: Source,
        sink: Sink,
        encoder: Encoder,
        transcript: CallTranscript,
        budget: PeerBudget,
        warn: RateLimitedLog,
        connected_at: float,
        on_end: Callable[[str, bool], None],
        recorder: CallRecorder | None = None,
    ) -> None:
        self._id = call_id
        self._link = link
        self._source = source
        self._sink = sink
        self._encoder = encoder
        self._transcript = transcript
        self._budget = budget
        self._warn = warn
        self._connected_at = connected_at
        self._on_end = on_end  # (reason, tell the peer) -> None; spawned, never blocks us
        self._recorder = recorder  # both sides' packets, as sent and received; never blocks
        self._outgoing: deque[p.Audio] = deque(maxlen=OUTGOING_FRAMES)
        self._ready = Event()
        self._remote_decoder: Decoder | None = None
        self.frames_dropped_unsent = 0
        self.stopping = False
        # The hang-up drain (calls/session.py): the peer answered a pending bye (any bye,
        # or the link's end, counts), and the peer's last word came (a plain bye, or the end).
        self.peer_answered = Event()
        self.peer_done = Event()
        self._pending_seen = False

    def greenlets(self) -> list[gevent.Greenlet]:
        return [gevent.spawn(self._capture), gevent.spawn(self._send), gevent.spawn(self._recv)]

    def _end(self, reason: str, notify_peer: bool) -> None:
        gevent.spawn(self._on_end, reason, notify_peer)

    # -- our side -----------------------------------------------------------------------

    def _capture(self) -> None:
        codec = Codec.named(self._encoder.name)
        seq = 0
        while not self.stopping:
            try:
                frame = self._source.read(timeout=1.0)
            except DeviceLost as exc:
                self._end(f"audio_failed: {exc}", True)
                return
            if frame is None:
                continue
            self._transcript.feed(Speaker.LOCAL, frame.pcm)
            if len(self._outgoing) == self._outgoing.maxlen:
                self.frames_dropped_unsent += 1
            payload = self._encoder.encode(frame.pcm)
            if self._recorder is not None:
                self._recorder.local(seq, codec, payload, frame.pcm)
            self._outgoing.append(
                p.Audio(
                    seq=seq & 0xFFFFFFFF,
                    capture_time_us=int(frame.capture_time * 1e6),
                    payload=payload,
                    codec=codec,
                )
            )
            self._ready.set()
            seq += 1

    def _send(self) -> None:
        while not self.stopping:
            self._ready.wait()
            self._ready.clear()
            while self._outgoing:
                try:
                    self._link.send(self._outgoing.popleft())
                except LinkClosed:
                    return  # the receive loop tells a hang-up (a bye came first) from a loss

    # -- the peer's side ----------------------------------------------------------------

    def _recv(self) -> None:
        try:
            self._receive()
        finally:  # however receiving ended, a hang-up's drain waits for nothing more
            self.peer_answered.set()
            self.peer_done.set()

    def _receive(self) -> None:
        link = self._link
        while True:  # link.recv yields to the hub between any two messages
            try:
                message = link.recv(timeout=PEER_SILENCE_S, pings_keep_alive=True)
            except (LinkClosed, TimeoutError) as exc:
                if not self.stopping:
                    why = str(exc) or "silent"
                    log.warning("call %s: peer %s lost: %s", self._id, link.peer, why)
                    self._end("peer_lost", False)
                return
            except p.ProtocolError as exc:
                log.warning("call %s: protocol error from %s: %s", self._id, link.peer, exc)
                self._end("protocol_error", False)
                return
            flood = None
            if isinstance(message, p.Audio):
                flood = self._budget.audio()
                if flood is None:
                    self._play(message)
            elif isinstance(message, p.Transcript):
                flood = self._budget.segment(message.text)
                call_s = time.time() - self._connected_at
                if flood is None and not self._transcript.accept_remote(message, call_s):
                    return  # the store failed: the call is ending with that reason
            elif isinstance(message, p.Bye):
                self.peer_answered.set()
                reason = clean_text(message.reason)
                if not message.pending:
                    if not self.stopping:
                        log.info("call %s: peer said bye: %r", self._id, reason)
                        self._end(f"peer_{reason}", False)
                    return
                # It hangs up and its last finals are coming: ours go to it too. Once.
                if self._pending_seen:
                    flood = self._budget.stray()
                else:
                    self._pending_seen = True
                    if not self.stopping:
                        log.info("call %s: peer hangs up: %r", self._id, reason)
                        self._end(f"peer_{reason}", True)
            else:
                kind = type(message).__name__
                self._warn.warning("stray", "call %s: unexpected %s mid-call", self._id, kind)
                flood = self._budget.stray()
            if flood is not None:
                log.warning("call %s: peer %s floods: %s; ending", self._id, link.peer, flood)
                self._end("peer_flood", False)
                return

    def _play(self, message: p.Audio) -> None:
        if self._recorder is not None:
            self._recorder.remote(message.seq, message.codec, message.payload)
        self._sink.playout.push(
            message.seq, message.capture_time_us, message.codec, message.payload
        )
        if self._transcript.transcribes(Speaker.REMOTE):
            self._transcript.feed(Speaker.REMOTE, self._decode_remote(message))

    def _decode_remote(self, message: p.Audio) -> np.ndarray:
        """The peer's frame as PCM for our transcriber of the peer. A decoder of its own:
        the playout buffer's decoder runs on the playout clock and conceals, this one must
        see every frame in arrival order."""
        name = message.codec.label
        if self._remote_decoder is None or self._remote_decoder.name != name:
            self._remote_decoder = make_decoder(name)
        try:
            return self._remote_decoder.decode(message.payload)
        except CodecError as exc:
            self._warn.warning(
                "undecodable",
                "call %s: undecodable %s frame %d: %s",
                self._id,
                name,
                message.seq,
                exc,
            )
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
