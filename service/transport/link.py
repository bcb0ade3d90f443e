"""One TCP connection to a peer node, carrying protocol messages both ways.

Runs on gevent sockets: a blocked send or receive parks only its greenlet. Sends are
serialised by a lock because audio, transcripts and the bye come from different greenlets
and a message must never be interleaved with another on the stream.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from gevent import socket as gsocket
from gevent.lock import RLock

from service.transport.protocol import Audio, Decoder, Message, ProtocolError, encode

log = logging.getLogger(__name__)
RECV_CHUNK = 8192


class LinkClosed(ConnectionError):
    """The connection is gone (peer closed, reset, or we closed it)."""


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    opened_at: float = field(default_factory=time.time)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to a (host, port) pair; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"peer must look like HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write IPv6 peers as [ADDR]:PORT, got {text!r}")
    value = int(port)
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be 1-65535, got {value}")
    return host, value


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tune(sock: socket.socket) -> None:
    # 20 ms audio frames must leave now, not wait for Nagle to fill a segment.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def connect(host: str, port: int, timeout: float) -> Link:
    sock = gsocket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    return Link(sock, format_address(host, port))


class Link:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        tune(sock)
        self.sock = sock
        self.peer = peer
        self.stats = LinkStats()
        self._decoder = Decoder()
        self._inbox: deque[Message] = deque()
        self._send_lock = RLock()
        self.closed = False

    def send(self, message: Message) -> None:
        data = encode(message)
        with self._send_lock:
            if self.closed:
                raise LinkClosed("link is closed")
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.closed = True
                raise LinkClosed(str(exc)) from exc
        self.stats.bytes_sent += len(data)
        self.stats.messages_sent += 1
        if isinstance(message, Audio):
            self.stats.frames_sent += 1

    def recv(self, timeout: float | None = None) -> Message:
        """Next message. Raises LinkClosed, ProtocolError, or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            if self.closed:
                raise LinkClosed("link is closed")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no message from peer in time")
                self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(RECV_CHUNK)
            except TimeoutError:
                raise
            except OSError as exc:
                self.closed = True
                raise LinkClosed(str(exc)) from exc
            finally:
                if deadline is not None and not self.closed:
                    self.sock.settimeout(None)
            if not data:
                self.closed = True
                raise LinkClosed("peer closed the connection")
            self.stats.bytes_received += len(data)
            try:
                self._inbox.extend(self._decoder.feed(data))
            except ProtocolError:
                self.close()
                raise
        message = self._inbox.popleft()
        self.stats.messages_received += 1
        if isinstance(message, Audio):
            self.stats.frames_received += 1
        return message

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
