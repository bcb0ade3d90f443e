"""An in-memory link pair: two connected `Link`s with no socket between them, so that what
runs over a link (handshake flows, a call's loops) can be tested without the kernel where a
socket adds nothing but time and ports.

Each end is a real ``service.transport.link.Link`` (its framing, keepalive, pong budget,
send stall and statistics, unchanged) over a `MemorySocket`: the few socket calls a Link
makes (``sendall``, ``recv``, ``shutdown``, ``close``, ``setsockopt``), served from two
bounded byte pipes on gevent events. What differs from TCP is only what TCP adds: no
latency, no resets, no half-written segments. A pipe holds at most ``capacity`` bytes
(SEND_BUFFER by default, as a tuned socket), so an end that stops reading makes the other
one's sends stall and its link close after SEND_TIMEOUT_S, as over loopback.

    dialer, listener = link_pair()
    dialer.send(p.Hello(...)); listener.recv(timeout=1)
"""

from __future__ import annotations

import errno
import socket

from gevent.event import Event

from service.transport.link import SEND_BUFFER, Link


class _Pipe:
    """Bytes one way, in order, at most ``capacity`` of them waiting to be read."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.eof = False  # the writer is done: the reader gets b"" once the buffer is empty
        self.broken = False  # the reader is gone: writing fails
        self.readable = Event()
        self.writable = Event()
        self.writable.set()

    def wake(self) -> None:
        self.readable.set()
        self.writable.set()


class MemorySocket:
    """The socket calls a Link makes, on two pipes. Blocking calls park the greenlet (gevent
    events), so gevent.Timeout bounds them as it bounds a gevent socket's."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, record: bool = False) -> None:
        self._in = inbound
        self._out = outbound
        self._closed = False
        # Everything this end sent, when asked for (a test reads what went over the wire).
        self.sent: bytearray | None = bytearray() if record else None

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def setsockopt(self, *args: object) -> None:
        """Options tune a kernel socket; there is none here."""

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check_open()
            out = self._out
            if out.broken or out.eof:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            room = out.capacity - len(out.buffer)
            if room <= 0:
                out.writable.clear()
                out.writable.wait()
                continue
            chunk, view = view[:room], view[room:]
            out.buffer += chunk
            if self.sent is not None:
                self.sent += chunk
            out.readable.set()

    def recv(self, size: int) -> bytes:
        pipe = self._in
        while True:
            self._check_open()
            if pipe.buffer:
                data = bytes(pipe.buffer[:size])
                del pipe.buffer[:size]
                pipe.writable.set()
                return data
            if pipe.eof:
                return b""
            pipe.readable.clear()
            pipe.readable.wait()

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._out.eof = True
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._in.broken = True
        self._in.wake()
        self._out.wake()

    def close(self) -> None:
        """Both directions end; a greenlet blocked on this end gets EBADF, as gevent gives
        one whose socket another greenlet closed."""
        if self._closed:
            return
        self._out.eof = True
        self._in.broken = True
        self._closed = True
        self._in.wake()
        self._out.wake()


def link_pair(capacity: int = SEND_BUFFER, record: bool = False) -> tuple[Link, Link]:
    """Two connected Links, (dialer's end, listener's end). With ``record`` each end's
    ``sock.sent`` keeps every byte it sent."""
    to_listener, to_dialer = _Pipe(capacity), _Pipe(capacity)
    dialer = Link(MemorySocket(to_dialer, to_listener, record), "memory:listener")
    listener = Link(MemorySocket(to_listener, to_dialer, record), "memory:dialer")
    return dialer, listener
