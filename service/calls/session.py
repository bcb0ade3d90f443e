"""One call's state machine: how it starts, connects and ends.

States (``vocab.CallState``): ``listening`` | ``connecting`` → ``connected`` → ``ended``, or
``failed`` when it never connected because connecting went wrong. Every transition is
written to the store, so the history of a call survives the process. The parts it drives
live beside it: the listening socket and both handshakes in ``transport/``, the media
loops in ``media.py``, the transcript in ``transcript.py``; views of a call in ``api/``.

Ending is ordered so nothing said is lost: stop the microphone, close the open utterance,
wait (bounded) for its transcription, send the last finals, then the bye.
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
from service.transport import handshake
from service.transport import protocol as p
from service.transport.link import Link, LinkClosed, connect
from service.transport.listener import Listener
from service.transport.tls import TlsError, client_context
from service.vocab import CallState, Mode

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0  # longest a hang-up waits for the last utterance's transcription


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
        self.ended = Event()
        self.events = EventBus()
        self.rejected_connections = 0
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
        # The peer will not transcribe its microphone: do it here from what we hear.
        self.transcript.start(transcribe_peer=not hello.transcribes)
        self.transcript.send = self._send_transcript
        budget = PeerBudget(time.monotonic(), self.ctx.remote_segments)
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
        )
        self._greenlets.extend(self.media.greenlets())

    def _send_transcript(self, t: p.Transcript) -> None:
        if self.link is not None and not self.link.closed:
            with contextlib.suppress(LinkClosed):
                self.link.send(t)

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
        self.transcript.flush()
        self.transcript.wait_idle(time.monotonic() + DRAIN_TIMEOUT_S)
        if self.transcript.pending:
            log.warning(
                "call %s: ended with %d utterances untranscribed", self.id, self.transcript.pending
            )
        if self.link is not None:
            if notify_peer:
                with contextlib.suppress(LinkClosed):
                    self.link.send(p.Bye(reason=reason[: p.MAX_REASON]))
            self.link.close()
        gevent.killall([g for g in self._greenlets if g is not me], block=False)
        self.sink.close()
        self.times.ended = time.time()
        self.end_reason = reason
        self.state = CallState.FAILED if failed and not was_connected else CallState.ENDED
        self._persist(
            state=self.state,
            ended_at=_at(self.times.ended),
            end_reason=reason,
            rejected_connections=self.rejected_connections,
            segments_refused=self.transcript.refused,
            **self.counters(),
        )
        log.info("call %s %s: %s", self.id, self.state, reason)
        self.events.publish(StateChange(self.state, reason))
        self.events.close()  # live feeds end after the last state
        self.ended.set()
        self.ctx.on_end(self)

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
