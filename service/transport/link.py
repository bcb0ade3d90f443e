"""One TCP (optionally TLS) connection to a peer node, carrying protocol messages both ways.

Runs on gevent sockets: a blocked send or receive parks only its greenlet. Sends are
serialised by a lock because audio, transcripts, keepalives and the bye come from different
greenlets and a message must never be interleaved with another on the stream.

Keepalive lives here, below the session: ``recv`` answers pings and consumes pongs itself,
so the round-trip time is measured for every link without the call logic knowing. Addresses
are parsed in addresses.py and TLS contexts and handshakes are in tls.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import ssl
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.lock import RLock

from service.ratelimit import TokenBucket
from service.transport.addresses import format_address
from service.transport.protocol import (
    Audio,
    Decoder,
    Message,
    Ping,
    Pong,
    ProtocolError,
    encode,
)
from service.transport.tls import tls_handshake

log = logging.getLogger(__name__)
RECV_CHUNK = 8192
MAX_OUTSTANDING_PINGS = 16  # older unanswered pings are forgotten (their pongs ignored)
PONG_RATE, PONG_BURST = 10.0, 20  # pongs a second this side answers with, at most
RTT_EWMA_WEIGHT = 0.125  # TCP's smoothed-RTT gain (RFC 6298)


class LinkClosed(ConnectionError):
    """The connection is gone (peer closed, reset, or we closed it)."""


@dataclass
class LinkStats:
    frames_sent: int = 0
    send_stalls: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    opened_at: float = field(default_factory=time.time)
    pings_sent: int = 0
    pongs_received: int = 0
    pings_answered: int = 0
    pings_ignored: int = 0  # past PONG_RATE: a peer pings once a second
    rtt_ms_last: float | None = None
    rtt_ms_min: float | None = None
    rtt_ms_avg: float | None = None  # exponentially weighted
    rtt_ms_max: float | None = None

    def add_rtt(self, ms: float) -> None:
        self.pongs_received += 1
        self.rtt_ms_last = ms
        self.rtt_ms_min = ms if self.rtt_ms_min is None else min(self.rtt_ms_min, ms)
        self.rtt_ms_max = ms if self.rtt_ms_max is None else max(self.rtt_ms_max, ms)
        avg = self.rtt_ms_avg
        self.rtt_ms_avg = ms if avg is None else avg + RTT_EWMA_WEIGHT * (ms - avg)

    def keepalive(self) -> dict[str, float | int | None]:
        """The liveness figures, rounded for people."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "pings_sent": self.pings_sent,
            "pongs_received": self.pongs_received,
            "pings_answered": self.pings_answered,
            "pings_ignored": self.pings_ignored,
            "rtt_ms_last": r(self.rtt_ms_last),
            "rtt_ms_min": r(self.rtt_ms_min),
            "rtt_ms_avg": r(self.rtt_ms_avg),
            "rtt_ms_max": r(self.rtt_ms_max),
        }


# A peer that stops reading must cost bounded memory and end the call, not stall it: the
# kernel may hold at most twice SEND_BUFFER bytes for it (Linux doubles SO_SNDBUF: ~4 s of
# PCM16, ~40 s of Opus, instead of the up-to-4 MiB that autotuning allows), and a send
# that cannot finish within SEND_TIMEOUT_S closes the link, which the call reports as
# peer_lost.
SEND_BUFFER = 64 * 1024
SEND_TIMEOUT_S = 2.0


def tune(sock: socket.socket) -> None:
    # 20 ms audio frames must leave now, not wait for Nagle to fill a segment.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def connect(
    host: str,
    port: int,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    tls_timeout: float | None = None,
) -> Link:
    """Dial; with ``tls``, also complete the TLS handshake within ``tls_timeout`` (default
    ``timeout``), verifying the listener's certificate for ``host``. The link's `opened_at`
    is when TCP connected, so one handshake deadline can cover TLS and hellos together."""
    sock = gsocket.create_connection((host, port), timeout=timeout)
    opened_at = time.monotonic()
    if tls is not None:
        try:
            sock = tls.wrap_socket(
                sock,
                server_hostname=host if tls.check_hostname else None,
                do_handshake_on_connect=False,
            )
        except BaseException:
            sock.close()
            raise
        tls_handshake(sock, timeout if tls_timeout is None else tls_timeout, "listener")
    sock.settimeout(None)
    return Link(sock, format_address(host, port), opened_at)


class Link:
    def __init__(self, sock: socket.socket, peer: str, opened_at: float | None = None) -> None:
        tune(sock)
        self.sock = sock
        self.peer = peer
        self.opened_at = time.monotonic() if opened_at is None else opened_at
        self.stats = LinkStats()
        self._decoder = Decoder()
        self._inbox: deque[Message] = deque()
        self._send_lock = RLock()
        self._ping_ids = itertools.count(1)
        self._pings: OrderedDict[int, int] = OrderedDict()  # id -> monotonic ns when sent
        self._pong_budget = TokenBucket(PONG_RATE, PONG_BURST)
        self._keepalive: gevent.Greenlet | None = None
        self._send_error = ""
        self.closed = False

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket | gssl.SSLSocket)

    def send(self, message: Message) -> None:
        data = encode(message)
        if not self._send_lock.acquire(timeout=SEND_TIMEOUT_S):
            self._stalled()
        try:
            if self.closed or self._send_error:
                raise LinkClosed(self._send_error or "link is closed")
            try:
                with gevent.Timeout(SEND_TIMEOUT_S):
                    self.sock.sendall(data)
            except gevent.Timeout:
                self._stalled()
            except OSError as exc:
                # Only the sending half is known broken: what the peer sent before it went
                # (its bye, above all) is still to be read, so reading goes on until the
                # socket itself reports the end.
                self._send_error = str(exc) or type(exc).__name__
                raise LinkClosed(self._send_error) from exc
        finally:
            self._send_lock.release()
        self.stats.bytes_sent += len(data)
        self.stats.messages_sent += 1
        if isinstance(message, Audio):
            self.stats.frames_sent += 1

    def _stalled(self) -> None:
        """The peer has not taken our data for SEND_TIMEOUT_S (its buffers are full): it is
        not reading. A half-written message cannot be taken back, so the whole link goes;
        the receive loop then sees it closed and the call ends as peer_lost."""
        self.stats.send_stalls += 1
        self._send_error = f"peer stopped reading (nothing sent for {SEND_TIMEOUT_S:.0f} s)"
        log.warning("link to %s: %s", self.peer, self._send_error)
        self.close()
        raise LinkClosed(self._send_error)

    def recv(self, timeout: float | None = None, pings_keep_alive: bool = False) -> Message:
        """Next message other than a ping or pong (those are handled here). Raises
        LinkClosed, ProtocolError, or TimeoutError when no such message came within
        ``timeout``. With ``pings_keep_alive`` (a connected call's receive loop) any message,
        pings included, restarts the wait: a peer whose keepalive still runs is alive even
        while it sends no audio (e.g. while it finishes its last transcription before saying
        bye), and one that is frozen or gone sends no pings either. Without it (the
        handshake) pings cannot stretch a deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # The hub gets a turn between any two messages, pings and pongs included: bytes
            # already waiting are otherwise read and handled without ever yielding, and a
            # flood of them would stall every other call, feed and request of the node.
            gevent.sleep(0)
            message = self._next(deadline)
            if pings_keep_alive and isinstance(message, Ping | Pong) and timeout is not None:
                deadline = time.monotonic() + timeout
            if isinstance(message, Ping):
                if not self._pong_budget.take():
                    self.stats.pings_ignored += 1  # a flood: answered at the budget's pace
                    continue
                self.stats.pings_answered += 1
                with contextlib.suppress(LinkClosed):  # the next read reports it
                    self.send(Pong(id=message.id, sent_us=message.sent_us))
            elif isinstance(message, Pong):
                sent_ns = self._pings.pop(message.id, None)
                if sent_ns is not None:  # unknown or forgotten ids are ignored
                    self.stats.add_rtt((time.monotonic_ns() - sent_ns) / 1e6)
            else:
                self.stats.messages_received += 1
                if isinstance(message, Audio):
                    self.stats.frames_received += 1
                return message

    def _next(self, deadline: float | None) -> Message:
        while not self._inbox:
            if self.closed:
                raise LinkClosed("link is closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no message from peer in time")
            # A gevent timeout rather than a socket timeout: the same for plain and TLS
            # sockets (an SSL read timeout would surface as an SSLError).
            try:
                with gevent.Timeout(remaining, TimeoutError("no message from peer in time")):
                    data = self.sock.recv(RECV_CHUNK)
            except TimeoutError:
                raise
            except OSError as exc:
                self.closed = True
                raise LinkClosed(str(exc) or type(exc).__name__) from exc
            if not data:
                self.closed = True
                raise LinkClosed("peer closed the connection")
            self.stats.bytes_received += len(data)
            try:
                self._inbox.extend(self._decoder.feed(data))
            except ProtocolError:
                self.close()
                raise
        return self._inbox.popleft()

    def start_keepalive(self, interval_s: float = 1.0) -> None:
        """Ping the peer every ``interval_s`` for as long as the link is open; the pongs
        come back through ``recv``, which somebody must be calling."""
        if self._keepalive is None and not self.closed:
            self._keepalive = gevent.spawn(self._ping_loop, interval_s)

    def _ping_loop(self, interval_s: float) -> None:
        while not self.closed and not self._send_error:
            ping_id = next(self._ping_ids) & 0xFFFFFFFF
            now_ns = time.monotonic_ns()
            self._pings[ping_id] = now_ns
            while len(self._pings) > MAX_OUTSTANDING_PINGS:
                self._pings.popitem(last=False)
            try:
                self.send(Ping(id=ping_id, sent_us=now_ns // 1000))
            except LinkClosed:
                return
            self.stats.pings_sent += 1
            gevent.sleep(interval_s)

    def close(self) -> None:
        self.closed = True
        keepalive = self._keepalive
        if keepalive is not None and keepalive is not gevent.getcurrent():
            keepalive.kill(block=False)
        with contextlib.suppress(OSError, ValueError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
