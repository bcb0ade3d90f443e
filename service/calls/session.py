"""One call: its state machine, its greenlets, and the wiring of audio, link, ASR and store.

States: ``listening`` | ``connecting`` → ``connected`` → ``ended`` (or ``failed`` when it
never connected). Every transition is written to the store, so the history of a call
survives the process.

Ending is ordered so nothing said is lost: stop the microphone, close the open utterance,
wait (bounded) for its transcription, send the last finals, then the bye.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import gevent
import numpy as np
from gevent.event import Event
from sqlalchemy.exc import SQLAlchemyError

from service.asr.stream import FinalSegment, StreamTranscriber
from service.audio.codecs import CodecError, Decoder, Encoder, make_decoder, make_encoder
from service.audio.frames import FRAME_SAMPLES
from service.audio.sinks import Sink
from service.audio.sources import DeviceLost, Source
from service.calls.events import EventBus
from service.calls.peer import PeerBudget, check_times, clean_text
from service.ratelimit import RateLimitedLog
from service.store.db import SegmentIn
from service.transport import handshake
from service.transport import protocol as p
from service.transport.link import (
    Link,
    LinkClosed,
    TlsError,
    accept_tls,
    client_context,
    connect,
    server_context,
)

if TYPE_CHECKING:
    from socket import socket

    from service.node import Node

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0  # longest a hang-up waits for the last utterance's transcription
# A connected peer sends an audio frame every 20 ms, silence included, so this long
# without a single message means it is gone even if TCP has not noticed (a partition,
# a frozen process).
PEER_SILENCE_S = 5.0
MAX_PENDING_HANDSHAKES = 16  # connections to one listening call not yet through the hello
# Of those, how many one source address may hold: a single host cannot take every place.
MAX_PENDING_PER_SOURCE = 4
# accept() errors that pass (out of descriptors or memory, a connection reset while queued):
# the call backs off and keeps listening instead of dying or turning into a zombie.
TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after a transient accept error


@dataclass
class _Pending:
    """A connection to a listening call that has not finished its handshake yet."""

    host: str
    started: float = field(default_factory=time.monotonic)
    proven: bool = False  # proved the token and claimed the call: never evicted


@dataclass(frozen=True)
class CallOptions:
    input: str
    output: str
    language: str | None
    transcribe: bool
    task: str = "transcribe"  # or "translate" (to English; needs a multilingual model)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, never negative (one deadline covers a whole handshake)."""
    return max(0.0, deadline - time.monotonic())


# What a segment carries besides its place in time, alike in ASR results, wire messages
# and stored rows.
SEGMENT_FIGURES = ("text", "language", "avg_logprob", "no_speech_prob", "compression_ratio")


def _figures(segment: FinalSegment | p.Transcript) -> dict[str, Any]:
    return {name: getattr(segment, name) for name in SEGMENT_FIGURES}


def _ts(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


class CallSession:
    def __init__(
        self,
        node: Node,
        call_id: str,
        mode: str,
        options: CallOptions,
        source: Source,
        sink: Sink,
        token: str,
    ) -> None:
        self.node = node
        self.id = call_id
        self.mode = mode
        self.options = options
        self.source = source
        self.sink = sink
        self.token = token
        self.state = "connecting" if mode == "dial" else "listening"
        self.local_address: str | None = None
        self.peer_address: str | None = None
        self.created_at = time.time()
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.peer_transcribes = True
        self.peer_hello: p.Hello | None = None  # what the peer can do (codecs), once connected
        self.codec: str | None = None  # what this side sends, chosen from both hellos
        self._encoder: Encoder | None = None
        self._remote_decoder: Decoder | None = None  # only when we transcribe the peer
        self.link: Link | None = None
        self.ended = Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._listener: socket | None = None
        self._ending = False
        self._claimed = False
        self._handshakes: dict[gevent.Greenlet, _Pending] = {}
        self._streams: dict[str, StreamTranscriber] = {}
        self._numbers = {"local": 0, "remote": 0}
        self.rejected_connections = 0
        self.segments_stored = {"local": 0, "remote": 0}
        self.segments_refused = 0  # peer segments with impossible times (never stored)
        self._budget: PeerBudget | None = None  # what the connected peer may still send
        self._last_remote_start: float | None = None
        self._warn = RateLimitedLog(log)  # what a peer can trigger is logged at a bounded rate
        self.events = EventBus()

    # -- starting -----------------------------------------------------------------------

    @property
    def transcribing(self) -> bool:
        return self.options.transcribe and self.node.engine is not None

    def listen(self, listener: socket, address: str) -> None:
        self._listener = listener
        self.local_address = address
        self._spawn(self._accept_loop)

    def dial(self, host: str, port: int, peer: str) -> None:
        self.peer_address = peer
        self._spawn(self._dial, host, port)

    def _spawn(self, fn: Any, *args: Any) -> gevent.Greenlet:
        g = gevent.spawn(fn, *args)
        self._greenlets.append(g)
        return g

    def _hello(self) -> p.Hello:
        return p.Hello(
            transcribes=self.transcribing,
            codecs=self.node.settings.codecs,
            node=self.node.node_id,
            nonce=handshake.new_nonce(),
        )

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        pause = ACCEPT_BACKOFF_S[0]
        while self.state == "listening" and not self._ending:
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                if self._ending or self.state != "listening" or listener.fileno() == -1:
                    return  # listener closed: the call connected or ended
                if exc.errno in TRANSIENT_ACCEPT_ERRORS:
                    self._warn.warning(
                        "accept",
                        "call %s: cannot accept a connection now (%s); still listening",
                        self.id,
                        exc.strerror or exc,
                    )
                    gevent.sleep(pause)
                    pause = min(2 * pause, ACCEPT_BACKOFF_S[1])
                    continue
                log.error("call %s: listening failed: %s", self.id, exc)
                self._spawn(self._fail, f"listen_failed: {exc.strerror or exc}")
                return
            pause = ACCEPT_BACKOFF_S[0]
            peer = f"{addr[0]}:{addr[1]}"
            if not self._make_room(addr[0]):
                # The hello deadline bounds how long each one lives, this bounds how many.
                self._turn_away(sock, peer, "too many connections still handshaking")
                continue
            g = gevent.spawn(self._handshake_incoming, sock, peer)
            self._handshakes[g] = _Pending(addr[0])
            g.link(lambda done: self._handshakes.pop(done, None))

    def _make_room(self, host: str) -> bool:
        """Whether a new connection from ``host`` may start its handshake, evicting the
        oldest one that has not proved the token when the places are taken. Nothing before
        the proof needs the token (a hello is free to send), so connections that stall in
        their handshake cannot lock the caller out: each newcomer pushes the oldest out, and
        the caller, whose handshake takes a round trip or two, is only pushed out if the
        places turn over completely meanwhile. A source that holds MAX_PENDING_PER_SOURCE
        evicts only its own, so one host cannot push out another's caller at all."""
        waiting = list(self._handshakes.items())
        same = [(g, h) for g, h in waiting if h.host == host]
        if len(same) >= MAX_PENDING_PER_SOURCE:
            candidates = same
        elif len(waiting) >= MAX_PENDING_HANDSHAKES:
            candidates = waiting
        else:
            return True
        unproven = [(h.started, g) for g, h in candidates if not h.proven]
        if not unproven:
            return False
        _, oldest = min(unproven, key=lambda item: item[0])
        self._handshakes.pop(oldest, None)
        oldest.kill(block=False)  # it counts and closes its own connection
        return True

    def _handshake_incoming(self, sock: socket, peer: str) -> None:
        """Check one incoming connection: TLS when configured, then hellos and proofs (see
        transport/handshake.py), all within the hello timeout. A wrong caller is turned
        away and the call keeps listening for the right one."""
        settings = self.node.settings
        deadline = time.monotonic() + settings.hello_timeout_s
        conn: Link | socket = sock
        claimed = False
        try:
            if settings.tls_cert is not None and settings.tls_key is not None:
                tls = server_context(str(settings.tls_cert), str(settings.tls_key))
                sock = accept_tls(sock, tls, settings.hello_timeout_s)
            link = conn = Link(sock, peer)
            hello = link.recv(timeout=_left(deadline))
            if not isinstance(hello, p.Hello):
                raise p.ProtocolError(f"expected a hello, got {type(hello).__name__}")
            if hello.version != p.PROTOCOL_VERSION:
                self._turn_away(link, peer, f"unsupported protocol version {hello.version}")
                return
            mine = self._hello()
            link.send(mine)
            auth = link.recv(timeout=_left(deadline))
            if not isinstance(auth, p.Auth):
                raise p.ProtocolError(f"expected auth, got {type(auth).__name__}")
            transcript = handshake.transcript_hash(hello, mine)
            if not handshake.verify(self.token, handshake.DIALER, transcript, auth.proof):
                self._turn_away(link, peer, "wrong call token")
                return
            if self.state != "listening" or self._claimed:
                self._turn_away(link, peer, "call is no longer listening")
                return
            # Claimed before the reply (which yields), so two right callers arriving
            # together cannot both be connected.
            self._claimed = claimed = True
            pending = self._handshakes.get(gevent.getcurrent())
            if pending is not None:
                pending.proven = True
            link.send(p.Auth(proof=handshake.proof(self.token, handshake.LISTENER, transcript)))
        except (p.ProtocolError, LinkClosed, TimeoutError, OSError) as exc:
            self._turn_away(conn, peer, str(exc) or type(exc).__name__, say_bye=False)
            if claimed:
                self._claimed = False
            return
        except gevent.GreenletExit:
            # Evicted by a newer connection (see _make_room) before proving the token.
            self._turn_away(conn, peer, "evicted by newer connections", say_bye=False)
            if claimed:
                self._claimed = False
            raise
        self.peer_address = peer
        if self._listener is not None:
            self._listener.close()
        self._connected(link, hello)

    def _turn_away(self, conn: Link | socket, peer: str, why: str, say_bye: bool = True) -> None:
        """Count, log and close a connection that may not join; tell it why when the
        connection can still carry a message."""
        self.rejected_connections += 1
        self._warn.warning(
            "rejected", "call %s: rejected connection from %s: %r", self.id, peer, why
        )
        # Cut to what the peer's parser accepts: `why` can quote the peer's input.
        bye = p.Bye(reason=("rejected: " + why)[: p.MAX_REASON])
        if say_bye and isinstance(conn, Link):
            with contextlib.suppress(LinkClosed):
                conn.send(bye)
        elif say_bye and self.node.settings.tls_cert is None:
            # Not yet a Link (turned away before its hello): a plain-TCP dialer can still
            # read why, instead of guessing from a silent close.
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(p.encode(bye))
        conn.close()

    def _dial(self, host: str, port: int) -> None:
        settings = self.node.settings
        tls = None
        if settings.tls_cert is not None:
            tls = client_context(None if settings.tls_insecure else str(settings.tls_ca))
        try:
            link = connect(
                host, port, settings.connect_timeout_s, tls, tls_timeout=settings.hello_timeout_s
            )
        except TlsError as exc:
            self._fail(f"handshake_failed: {exc}")
            return
        except OSError as exc:
            self._fail(f"connect_failed: {exc}")
            return
        try:
            outcome = self._dialer_handshake(link)
        except (p.ProtocolError, LinkClosed, TimeoutError, OSError) as exc:
            outcome = f"handshake_failed: {str(exc) or type(exc).__name__}"
            if isinstance(exc, LinkClosed) and not link.tls and link.stats.bytes_received == 0:
                outcome += " before answering (a TLS listener? this node dials without TLS)"
        except BaseException:  # killed by a hang-up while connecting
            link.close()
            raise
        if isinstance(outcome, str):
            link.close()
            self._fail(outcome)
            return
        self._connected(link, outcome)

    def _dialer_handshake(self, link: Link) -> p.Hello | str:
        """The dialer's half of the handshake: the listener's hello once both sides have
        proved the call token, or why the call cannot go on. One deadline, from the TCP
        connect, covers TLS and the hellos, as on the listener's side."""
        deadline = link.opened_at + self.node.settings.hello_timeout_s
        mine = self._hello()
        link.send(mine)
        reply = link.recv(timeout=_left(deadline))
        if isinstance(reply, p.Bye):
            return reply.reason
        if not isinstance(reply, p.Hello) or reply.version != p.PROTOCOL_VERSION:
            return "handshake_failed: peer did not answer with a compatible hello"
        transcript = handshake.transcript_hash(mine, reply)
        link.send(p.Auth(proof=handshake.proof(self.token, handshake.DIALER, transcript)))
        answer = link.recv(timeout=_left(deadline))
        if isinstance(answer, p.Bye):
            return answer.reason  # "rejected: wrong call token", typically
        if not isinstance(answer, p.Auth) or not handshake.verify(
            self.token, handshake.LISTENER, transcript, answer.proof
        ):
            return "handshake_failed: listener could not prove the call token"
        return reply

    # -- the connected call -------------------------------------------------------------

    def _connected(self, link: Link, hello: p.Hello) -> None:
        if self._ending:
            link.close()
            return
        self.link = link
        self.peer_hello = hello
        self.peer_transcribes = hello.transcribes
        link.start_keepalive()
        self.connected_at = time.time()
        self.state = "connected"
        log.info("call %s connected to %s", self.id, link.peer)
        self._publish("state", {"state": "connected", "end_reason": None})
        self.codec = p.choose_codec(self.node.settings.codecs, hello.codecs)
        # A device that dies mid-call ends this side with its reason, never a hang.
        self.sink.on_failed = lambda reason: self._spawn(self.end, f"audio_failed: {reason}")
        try:
            self._encoder = self._make_encoder()
            self.source.start()
            self.sink.start()
        except Exception as exc:
            log.exception("call %s: audio failed to start", self.id)
            self._spawn(self.end, f"audio_failed: {exc}")
            return
        self._budget = PeerBudget(time.monotonic(), self.node.registry.remote_segments)
        self._persist(
            state="connected",
            connected_at=datetime.fromtimestamp(self.connected_at, UTC),
            peer_address=self.peer_address,
        )
        if self.transcribing:
            self._streams["local"] = self._stream("local")
            # The peer will not transcribe its microphone: do it here from what we hear.
            if not hello.transcribes:
                self._streams["remote"] = self._stream("remote")
        self._spawn(self._send_loop)
        self._spawn(self._recv_loop)

    def _make_encoder(self) -> Encoder:
        settings = self.node.settings
        if self.codec != "opus":
            return make_encoder("pcm16")
        # No in-band FEC: TCP delivers every frame in order, so redundancy for a lost packet
        # is bits that can never be used; a late frame is concealed by the playout buffer.
        # Complexity 5 rather than libopus's 10: 137 µs instead of 298 µs per frame here, at
        # the same waveform SNR on speech (14.4 dB at 20 kbit/s), which is what lets 20 Opus
        # calls fit on two cores.
        return make_encoder(
            "opus",
            bitrate=settings.opus_bitrate,
            frame_ms=settings.opus_frame_ms,
            fec=False,
            complexity=5,
        )

    def _send_loop(self) -> None:
        link = self.link
        assert link is not None
        encoder = self._encoder
        assert encoder is not None
        codec = p.Codec[encoder.name.upper()]
        seq = 0
        while not self._ending:
            try:
                frame = self.source.read(timeout=1.0)
            except DeviceLost as exc:
                self._spawn(self.end, f"audio_failed: {exc}")
                return
            if frame is None:
                continue
            try:
                link.send(
                    p.Audio(
                        seq=seq & 0xFFFFFFFF,
                        capture_time_us=int(frame.capture_time * 1e6),
                        payload=encoder.encode(frame.pcm),
                        codec=codec,
                    )
                )
            except LinkClosed:
                return  # the receive loop tells a hang-up (a bye came first) from a loss
            seq += 1
            self._feed("local", frame.pcm)

    def _recv_loop(self) -> None:
        link = self.link
        budget = self._budget
        assert link is not None and budget is not None
        while True:  # link.recv yields to the hub between any two messages
            try:
                message = link.recv(timeout=PEER_SILENCE_S, pings_keep_alive=True)
            except (LinkClosed, TimeoutError) as exc:
                if not self._ending:
                    log.warning(
                        "call %s: peer %s lost: %s", self.id, link.peer, str(exc) or "silent"
                    )
                    self._spawn(self.end, "peer_lost", False)
                return
            except p.ProtocolError as exc:
                log.warning("call %s: protocol error from %s: %s", self.id, link.peer, exc)
                self._spawn(self.end, "protocol_error", False)
                return
            flood = None
            if isinstance(message, p.Audio):
                flood = budget.audio()
                if flood is None:
                    self.sink.playout.push(
                        message.seq, message.capture_time_us, message.codec, message.payload
                    )
                    if "remote" in self._streams:
                        self._feed("remote", self._decode_remote(message))
            elif isinstance(message, p.Transcript):
                flood = budget.segment(message.text)
                if flood is None and not self._store_remote(message):
                    return  # the store failed: the call is ending with that reason
            elif isinstance(message, p.Bye):
                reason = clean_text(message.reason)
                log.info("call %s: peer said bye: %r", self.id, reason)
                self._spawn(self.end, f"peer_{reason}", False)
                return
            else:
                self._warn.warning(
                    "stray", "call %s: unexpected %s mid-call", self.id, type(message).__name__
                )
            if flood is not None:
                log.warning(
                    "call %s: peer %s floods: %s; ending the call", self.id, link.peer, flood
                )
                self._spawn(self.end, "peer_flood", False)
                return

    def _decode_remote(self, message: p.Audio) -> np.ndarray:
        """The peer's frame as PCM for our transcriber of the peer. A decoder of its own:
        the playout buffer's decoder runs on the playout clock and conceals, this one must
        see every frame in arrival order."""
        name = message.codec.name.lower()
        if self._remote_decoder is None or self._remote_decoder.name != name:
            self._remote_decoder = make_decoder(name)
        try:
            return self._remote_decoder.decode(message.payload)
        except CodecError as exc:
            self._warn.warning(
                "undecodable",
                "call %s: undecodable %s frame %d: %s",
                self.id,
                name,
                message.seq,
                exc,
            )
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)

    # -- transcription ------------------------------------------------------------------

    def _stream(self, speaker: str) -> StreamTranscriber:
        node = self.node
        assert node.engine is not None
        return StreamTranscriber(
            node.engine,
            node.segmenter_config,
            on_final=lambda no, segments: self._on_final(speaker, no, segments),
            on_partial=lambda no, text, start, end: self._publish(
                "partial",
                {"speaker": speaker, "utterance": no, "text": text, "start": start, "end": end},
            ),
            language=self.options.language,
            task=self.options.task,
            partial_interval_s=node.settings.partial_interval_s,
            label=f"call {self.id} ({speaker})",
            prompt_chars=node.settings.asr_prompt_chars,
        )

    @property
    def _pending_asr(self) -> int:
        return sum(s.pending for s in self._streams.values())

    def _feed(self, speaker: str, pcm: np.ndarray) -> None:
        stream = self._streams.get(speaker)
        if stream is None or pcm.shape != (FRAME_SAMPLES,):
            return
        stream.push(pcm)

    def _on_final(self, speaker: str, utterance: int, segments: list[FinalSegment]) -> None:
        for r in segments:
            number = self._numbers[speaker]
            self._numbers[speaker] += 1
            figures = _figures(r)
            figures["text"] = clean_text(figures["text"])
            # Committed first: only a durable segment is reported to anyone.
            if not self._store(speaker, number, r.start_s, r.end_s, figures, r.task, utterance):
                return
            if speaker == "local" and self.link is not None and not self.link.closed:
                with contextlib.suppress(LinkClosed):
                    self.link.send(p.Transcript(no=number, start=r.start_s, end=r.end_s, **figures))

    def _store_remote(self, t: p.Transcript) -> bool:
        """Keep a segment the peer transcribed, if its times can be right; False only when
        the store failed (and the call is ending)."""
        if "remote" in self._streams:
            return True  # we transcribe the peer ourselves; it said it would not
        call_s = time.time() - (self.connected_at or time.time())
        wrong = check_times(t.start, t.end, call_s, self._last_remote_start)
        if wrong is not None:
            self.segments_refused += 1
            self._warn.warning(
                "times", "call %s: refused peer segment %d: %s", self.id, t.no, wrong
            )
            return True
        self._last_remote_start = t.start
        figures = _figures(t)
        figures["text"] = clean_text(figures["text"])
        return self._store("remote", t.no, t.start, t.end, figures)

    def _store(
        self,
        speaker: str,
        number: int,
        start: float,
        end: float,
        figures: dict[str, Any],
        task: str | None = None,
        utterance: int | None = None,
    ) -> bool:
        """Commit a final, then (only then) publish it with its row id as the event id.
        False when the store failed: the call then ends with that reason, for a call that
        cannot keep what is said must not go on as if it did."""
        seg = SegmentIn(
            speaker=speaker, number=number, start_s=start, end_s=end, task=task, **figures
        )
        try:
            row = self.node.store.add_segment(self.id, seg)
        except SQLAlchemyError as exc:
            self._storage_failed(exc)
            return False
        if row is None:
            return True  # delivered twice: stored and published the first time
        self.segments_stored[speaker] += 1
        self._publish(
            "final",
            {
                "speaker": speaker,
                "utterance": utterance,
                "number": number,
                "id": row.id,
                "text": figures["text"],
                "start": start,
                "end": end,
                "language": figures["language"],
                "task": task,
            },
            row.id,
        )
        return True

    def _storage_failed(self, exc: SQLAlchemyError) -> None:
        if self._ending:
            return
        why = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        log.error("call %s: cannot store its transcript (%s); ending the call", self.id, why)
        self._spawn(self.end, f"storage_failed: {why}", False)

    # -- ending -------------------------------------------------------------------------

    def end(self, reason: str = "hangup", notify_peer: bool = True, failed: bool = False) -> None:
        """Hang up (idempotent). Blocks the calling greenlet until the call is closed.

        `failed` marks a call that never connected because connecting went wrong (as
        opposed to one that was hung up before anyone answered)."""
        if self._ending:
            self.ended.wait()
            return
        self._ending = True
        if self._listener is not None:
            self._listener.close()
        was_connected = self.state == "connected"
        me = gevent.getcurrent()
        self.source.close()
        for stream in self._streams.values():
            stream.flush()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for stream in self._streams.values():
            stream.idle.wait(max(0.0, deadline - time.monotonic()))
        if self._pending_asr:
            log.warning(
                "call %s: ended with %d utterances untranscribed", self.id, self._pending_asr
            )
        if self.link is not None:
            if notify_peer:
                with contextlib.suppress(LinkClosed):
                    self.link.send(p.Bye(reason=reason[: p.MAX_REASON]))
            self.link.close()
        gevent.killall([g for g in self._greenlets if g is not me], block=False)
        self.sink.close()
        self.ended_at = time.time()
        self.end_reason = reason
        self.state = "failed" if failed and not was_connected else "ended"
        self._persist(
            state=self.state,
            ended_at=datetime.fromtimestamp(self.ended_at, UTC),
            end_reason=reason,
            rejected_connections=self.rejected_connections,
            segments_refused=self.segments_refused,
            **self._counters(),
        )
        log.info("call %s %s: %s", self.id, self.state, reason)
        self._publish("state", {"state": self.state, "end_reason": reason})
        self.events.close()  # live feeds end after the last state
        self.ended.set()
        self.node.registry.forget(self)

    def _fail(self, reason: str) -> None:
        log.warning("call %s failed: %s", self.id, reason)
        self.end(reason, notify_peer=False, failed=True)

    # -- reporting ----------------------------------------------------------------------

    def _publish(self, kind: str, data: dict[str, Any], event_id: int | None = None) -> None:
        """Tell live-feed listeners (SSE); never blocks the call."""
        self.events.publish(kind, {"call_id": self.id, **data}, event_id)

    def _counters(self) -> dict[str, int]:
        s = self.link.stats if self.link is not None else None
        return {
            "frames_sent": s.frames_sent if s else 0,
            "frames_received": s.frames_received if s else 0,
            "bytes_sent": s.bytes_sent if s else 0,
            "bytes_received": s.bytes_received if s else 0,
        }

    def _persist(self, **fields: Any) -> None:
        try:
            self.node.store.update_call(self.id, **fields)
        except Exception:
            log.exception("call %s: could not record %s", self.id, sorted(fields))

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mode": self.mode,
            "state": self.state,
            "address": self.local_address,
            "peer": self.peer_address,
            "input": self.options.input,
            "output": self.options.output,
            "language": self.options.language,
            "transcribe": self.options.transcribe,
            "task": self.options.task,
            "created_at": _ts(self.created_at),
            "connected_at": _ts(self.connected_at),
            "ended_at": _ts(self.ended_at),
            "end_reason": self.end_reason,
            "stats": {
                **self._counters(),
                "rejected_connections": self.rejected_connections,
                "segments": dict(self.segments_stored),
                "segments_refused": self.segments_refused,
                "asr_pending": self._pending_asr,
                "in_speech": any(s.in_speech for s in self._streams.values()),
                "input": self.source.stats,
                "output": self.sink.stats,
                "link": self._link_stats(),
                "quality": self._quality(),
            },
        }

    def _quality(self) -> dict[str, Any] | None:
        """The call-quality figures a person checks first, gathered from the link, the
        playout buffer and the devices (the details stay in ``link``/``input``/``output``)."""
        link = self.link
        if link is None or self.connected_at is None:
            return None
        seconds = max(1e-3, (self.ended_at or time.time()) - self.connected_at)
        out = self.sink.stats
        source = self.source.stats
        return {
            "codec": self.codec,
            "send_kbps": round(link.stats.bytes_sent * 8 / seconds / 1000, 1),
            "receive_kbps": round(link.stats.bytes_received * 8 / seconds / 1000, 1),
            "rtt_ms": link.stats.keepalive()["rtt_ms_avg"],
            "jitter_ms": out["jitter_ms"],
            "playout_delay_ms": out["target_ms"],
            "playout_depth_ms": out["depth_ms"],
            "one_way_latency_ms": out["latency_ms"],
            "frames_concealed": out["frames_concealed"],
            "frames_dropped": out["frames_dropped_late"]
            + out["frames_dropped_overflow"]
            + out["frames_dropped_catchup"],
            "playout_underruns": out["underruns"] + out.get("device_underflows", 0),
            "capture_overruns": source.get("overflows", 0) + source.get("dropped", 0),
        }

    def _link_stats(self) -> dict[str, Any] | None:
        """Keepalive round-trip times and whether the link is encrypted (live only)."""
        if self.link is None:
            return None
        return {
            "tls": self.link.tls,
            "send_stalls": self.link.stats.send_stalls,
            **self.link.stats.keepalive(),
        }
