"""One call's state machine: how it starts, connects and ends.

States (``vocab.CallState``): ``listening`` | ``connecting`` → ``connected`` → ``ended``, or
``failed`` when it never connected because connecting went wrong. Every transition is
written to the store, so the history of a call survives the process. The parts it drives
live beside it: the listening socket and both handshakes in ``transport/``, the media
loops in ``media.py``, the transcript in ``transcript.py``; views of a call in ``api/``.

Ending is ordered so nothing said is lost, on both nodes: the side that hangs up says so
with a *pending* bye; each side then stops its microphone, closes its open utterance, waits
(bounded: IM_HANGUP_DRAIN_S) for its transcription and sends its last finals, then a plain
bye, and closes once the peer's plain bye came too (or the drain's time is up). A peer that
does not answer the pending bye within ANSWER_S (frozen, gone) is not waited for; one from
before drains takes the pending bye as a plain one and closes, which ends the wait too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gevent
from gevent.event import Event

from service.audio.sinks import Sink
from service.audio.sources import Source
from service.calls.context import CallContext
from service.calls.events import EventBus, StateChange
from service.calls.media import Media, make_call_encoder
from service.calls.options import CallOptions
from service.calls.peer import PeerBudget
from service.calls.transcript import CallTranscript
from service.ratelimit import RateLimitedLog
from service.recordings import CallRecorder
from service.transport import handshake
from service.transport import protocol as p
from service.transport.link import Link, LinkClosed, connect
from service.transport.listener import Listener
from service.transport.tls import TlsError, client_context
from service.vocab import CallState, Mode

log = logging.getLogger(__name__)

ANSWER_S = 3.0  # a live peer answers a pending bye at once; after this it is not waited for
PEER_GRACE_S = 2.0  # the peer's drain began up to a round trip after ours
RECORDING_CLOSE_S = 5.0  # longest the end waits for the recorder's last pages


@dataclass
class Times:
    """When a call was created, connected and ended (time.time())."""

    created: float = field(default_factory=time.time)
    connected: float | None = None
    ended: float | None = None


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class CallSession:
    def __init__(
        self,
        ctx: CallContext,
        call_id: str,
        mode: Mode,
        options: CallOptions,
        source: Source,
        sink: Sink,
        token: str,
    ) -> None:
        self.ctx = ctx
        self.id = call_id
        self.mode = mode
        self.options = options
        self.source = source
        self.sink = sink
        self.token = token
        self.state = CallState.CONNECTING if mode is Mode.DIAL else CallState.LISTENING
        self.times = Times()
        self.local_address: str | None = None
        self.peer_address: str | None = None
        self.end_reason: str | None = None
        self.peer_hello: p.Hello | None = None  # what the peer can do, once connected
        self.codec: str | None = None  # what this side sends, chosen from both hellos
        self.link: Link | None = None
        self.listener: Listener | None = None
        self.media: Media | None = None
        self.recorder: CallRecorder | None = None
        self.recording_deleted_at: float | None = None
        self.ended = Event()
        self.events = EventBus()
        self.rejected_connections = 0
        self.untranscribed = 0  # utterances its end could not wait for (GET /metrics)
        self._warn = RateLimitedLog(log)  # what a peer can trigger is logged at a bounded rate
        self.transcript = CallTranscript(ctx, call_id, options, self.events, self._warn)
        self.transcript.on_failed = lambda reason: self._spawn(self.end, reason, False)
        self._greenlets: list[gevent.Greenlet] = []
        self._ending = False

    @property
    def transcribing(self) -> bool:
        return self.transcript.transcribing

    # -- starting -----------------------------------------------------------------------

    def listen(self, listener: Listener, address: str) -> None:
        self.listener = listener
        self.local_address = address
        listener.start()

    def listener_callbacks(self) -> dict[str, Any]:
        """What a Listener for this call reports to (see registry.listen)."""
        return {
            "token": self.token,
            "hello": self._hello,
            "on_caller": self._answered,
            "on_rejected": self._rejected,
            "on_failed": lambda reason: self._spawn(self._fail, reason),
            "on_transient": lambda why: self._warn.warning(
                "accept", "call %s: cannot accept a connection now (%s)", self.id, why
            ),
        }

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
            codecs=self.ctx.settings.codecs,
            node=self.ctx.node_id,
            nonce=handshake.new_nonce(),
            records=self.options.record,
        )

    def _rejected(self, peer: str, why: str) -> None:
        self.rejected_connections += 1
        self._warn.warning(
            "rejected", "call %s: rejected connection from %s: %r", self.id, peer, why
        )

    def _answered(self, link: Link, hello: p.Hello) -> None:
        self.peer_address = link.peer
        self._connected(link, hello)

    def _dial(self, host: str, port: int) -> None:
        settings = self.ctx.settings
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
        # One deadline, from the TCP connect, covers TLS and the hellos, as on the
        # listener's side.
        deadline = link.opened_at + settings.hello_timeout_s
        try:
            outcome = handshake.call(link, self.token, self._hello(), deadline)
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

    # -- the connected call -------------------------------------------------------------

    def _connected(self, link: Link, hello: p.Hello) -> None:
        if self._ending:
            link.close()
            return
        self.link = link
        self.peer_hello = hello
        link.start_keepalive()
        self.times.connected = time.time()
        self.state = CallState.CONNECTED
        log.info("call %s connected to %s", self.id, link.peer)
        self.events.publish(StateChange(CallState.CONNECTED))
        self.codec = p.choose_codec(self.ctx.settings.codecs, hello.codecs)
        # A device that dies mid-call ends this side with its reason, never a hang.
        self.sink.on_failed = lambda reason: self._spawn(self.end, f"audio_failed: {reason}")
        try:
            encoder = make_call_encoder(self.codec, self.ctx.settings)
            self.source.start()
            self.sink.start()
        except Exception as exc:
            log.exception("call %s: audio failed to start", self.id)
            self._spawn(self.end, f"audio_failed: {exc}")
            return
        self._persist(
            state=CallState.CONNECTED,
            connected_at=_at(self.times.connected),
            peer_address=self.peer_address,
        )
        if self._ending:  # hung up while the store wrote: start no recorder nor media loops
            return
        # The peer will not transcribe its microphone: do it here from what we hear.
        self.transcript.start(transcribe_peer=not hello.transcribes)
        self.transcript.send = self._send
        budget = PeerBudget(time.monotonic(), self.ctx.remote_segments)
        if self.options.record:
            settings = self.ctx.settings
            self.recorder = CallRecorder(
                settings.recordings_dir,
                self.id,
                settings.opus_bitrate,
                lossless=settings.record_lossless,
            )
        self.media = Media(
            self.id,
            link,
            self.source,
            self.sink,
            encoder,
            self.transcript,
            budget,
            self._warn,
            self.times.connected,
            on_end=self.end,
            recorder=self.recorder,
        )
        self._greenlets.extend(self.media.greenlets())

    def _send(self, message: p.Transcript | p.Bye) -> None:
        """To the peer, while there is an open link (a closed one is not even waited on)."""
        if self.link is not None and not self.link.closed:
            with contextlib.suppress(LinkClosed):
                self.link.send(message)

    # -- ending -------------------------------------------------------------------------

    def end(self, reason: str = "hangup", notify_peer: bool = True, failed: bool = False) -> None:
        """Hang up (idempotent). Blocks the calling greenlet until the call is closed.

        `failed` marks a call that never connected because connecting went wrong (as
        opposed to one that was hung up before anyone answered)."""
        if self._ending:
            self.ended.wait()
            return
        self._ending = True
        if self.listener is not None:
            self.listener.close()
        was_connected = self.state is CallState.CONNECTED
        me = gevent.getcurrent()
        self.source.close()
        if self.media is not None:
            self.media.stopping = True
        self._drain(reason, notify_peer)
        gevent.killall([g for g in self._greenlets if g is not me], block=False)
        self.sink.close()
        self._close_recording()
        self.times.ended = time.time()
        self.end_reason = reason
        self.state = CallState.FAILED if failed and not was_connected else CallState.ENDED
        self._persist(
            state=self.state,
            ended_at=_at(self.times.ended),
            end_reason=reason,
            rejected_connections=self.rejected_connections,
            segments_refused=self.transcript.refused,
            peer_records=self.peer_hello.records if self.peer_hello is not None else None,
            recording_stopped=self.recorder.stopped if self.recorder is not None else None,
            **self.counters(),
        )
        log.info("call %s %s: %s", self.id, self.state, reason)
        # Its post-call pass, over the recording closed above: queued before the feeds hear
        # of the end, so a feed that waits for the pass finds it.
        self.ctx.after_call(self)
        self.events.publish(StateChange(self.state, reason))
        self.events.close()  # live feeds end after the last state
        self.ended.set()
        self.ctx.on_end(self)

    def _drain(self, reason: str, notify_peer: bool) -> None:
        """Both sides' last finals to both nodes, then the link closed (see the top)."""
        deadline = time.monotonic() + self.ctx.settings.hangup_drain_s
        link, media = self.link, self.media
        talking = notify_peer and link is not None and media is not None
        self.transcript.flush()
        if talking:
            self._send(p.Bye(reason=reason[: p.MAX_REASON], pending=True))
        asked_at = time.monotonic()
        self.transcript.wait_idle(deadline)
        self.untranscribed = self.transcript.pending
        if self.untranscribed and self.ctx.pass_follows(self):
            # The recording has them and the pass will transcribe it: decoding them now
            # would delay the calls still running, and store on this node alone what the
            # peer (the link closes next) never hears of.
            self.transcript.withdraw()
            log.info(
                "call %s: %d utterances untranscribed at its end, left to the post-call pass",
                self.id,
                self.untranscribed,
            )
        elif self.untranscribed:
            log.warning(
                "call %s: ended with %d utterances untranscribed", self.id, self.untranscribed
            )
        self.transcript.release()
        if link is None:
            return
        if notify_peer:
            self._send(p.Bye(reason=reason[: p.MAX_REASON]))
        if talking:
            assert media is not None
            # The peer's own last finals: only from a peer that answered (its pending bye,
            # or any bye, or the link closing) within ANSWER_S of our asking.
            if media.peer_answered.wait(max(0.0, asked_at + ANSWER_S - time.monotonic())):
                media.peer_done.wait(max(0.0, deadline + PEER_GRACE_S - time.monotonic()))
        link.close()

    def _close_recording(self) -> None:
        """The recorder's last pages (EOS) on the disk; bounded, never the call's end."""
        if self.recorder is None:
            return
        self.recorder.close()
        if not self.recorder.wait_closed(RECORDING_CLOSE_S, gevent.sleep):
            log.warning("call %s: recording still closing after %.0f s", self.id, RECORDING_CLOSE_S)

    def stop_recording(self, reason: str) -> None:
        """Stop recording now, keeping the call (before its audio is deleted)."""
        if self.recorder is not None:
            self.recorder.stop(reason)
            self.recorder.wait_closed(RECORDING_CLOSE_S, gevent.sleep)

    def _fail(self, reason: str) -> None:
        log.warning("call %s failed: %s", self.id, reason)
        self.end(reason, notify_peer=False, failed=True)

    def counters(self) -> dict[str, int]:
        """The link's totals, as the store keeps them."""
        s = self.link.stats if self.link is not None else None
        return {
            "frames_sent": s.frames_sent if s else 0,
            "frames_received": s.frames_received if s else 0,
            "bytes_sent": s.bytes_sent if s else 0,
            "bytes_received": s.bytes_received if s else 0,
        }

    def _persist(self, **fields: Any) -> None:
        try:
            self.ctx.store.update_call(self.id, **fields)
        except Exception:
            log.exception("call %s: could not record %s", self.id, sorted(fields))
