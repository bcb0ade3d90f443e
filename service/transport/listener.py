"""A listening call's socket: accept connections, give each a bounded handshake, and hand
the first caller that proves the token to the call.

Anyone can connect, and nothing before the proof needs the token (a hello is free to send),
so every connection is a stranger until then. What bounds them:

- **Places.** At most MAX_PENDING connections are in their handshake at once, and one source
  address holds at most MAX_PENDING_PER_SOURCE. When the places are taken, a newcomer evicts
  the *oldest* connection that has not proved the token (from its own source once that
  source holds its share), so connections that stall cannot lock the caller out: the caller,
  whose handshake takes a round trip or two, is only pushed out if the places turn over
  completely meanwhile, and one host cannot push out another's caller at all.
- **Time.** One deadline (the hello timeout) covers TLS, the hellos and the proofs.
- **Errors.** accept() errors that pass (out of descriptors or memory, a connection reset
  while queued) make the loop back off and go on listening, never die silently; any other
  error ends the call with its reason.

Every connection turned away is reported (``on_rejected``) and told why with a bye when
the connection can still carry one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
from gevent import socket as gsocket

from service.transport import handshake
from service.transport import protocol as p
from service.transport.link import Link, LinkClosed
from service.transport.tls import accept_tls

log = logging.getLogger(__name__)

MAX_PENDING = 16  # connections to one listening call not yet through the handshake
MAX_PENDING_PER_SOURCE = 4  # of those, how many one source address may hold
TRANSIENT_ACCEPT_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after a transient accept error
BACKLOG = 8


@dataclass
class Pending:
    """A connection that has not finished its handshake yet."""

    host: str
    started: float = field(default_factory=time.monotonic)
    proven: bool = False  # proved the token and claimed the call: never evicted


class Listener:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str,
        hello: Callable[[], p.Hello],
        hello_timeout_s: float,
        tls: ssl.SSLContext | None,
        on_caller: Callable[[Link, p.Hello], None],
        on_rejected: Callable[[str, str], None],
        on_failed: Callable[[str], None],
        on_transient: Callable[[str], None],
    ) -> None:
        """Binds at once (OSError when the address cannot be had); ``start`` accepts."""
        family = gsocket.AF_INET6 if ":" in host else gsocket.AF_INET
        sock = gsocket.socket(family, gsocket.SOCK_STREAM)
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._token = token
        self._hello = hello
        self._timeout = hello_timeout_s
        self._tls = tls
        self._on_caller = on_caller
        self._on_rejected = on_rejected
        self._on_failed = on_failed
        self._on_transient = on_transient
        self._pending: dict[gevent.Greenlet, Pending] = {}
        self._claimed = False
        self._closed = False
        self._loop: gevent.Greenlet | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loop = gevent.spawn(self._accept_loop)

    def close(self) -> None:
        """Stop accepting (idempotent); handshakes under way are refused at their claim."""
        self._closed = True
        self._sock.close()

    def _accept_loop(self) -> None:
        pause = ACCEPT_BACKOFF_S[0]
        while not self._closed:
            try:
                sock, addr = self._sock.accept()
            except OSError as exc:
                if self._closed or self._sock.fileno() == -1:
                    return
                if exc.errno in TRANSIENT_ACCEPT_ERRORS:
                    self._on_transient(exc.strerror or str(exc))
                    gevent.sleep(pause)
                    pause = min(2 * pause, ACCEPT_BACKOFF_S[1])
                    continue
                self._on_failed(f"listen_failed: {exc.strerror or exc}")
                return
            pause = ACCEPT_BACKOFF_S[0]
            peer = f"{addr[0]}:{addr[1]}"
            if not self._make_room(addr[0]):
                self._turn_away(sock, peer, "too many connections still handshaking")
                continue
            g = gevent.spawn(self._handshake, sock, peer)
            self._pending[g] = Pending(addr[0])
            g.link(lambda done: self._pending.pop(done, None))

    def _make_room(self, host: str) -> bool:
        """Whether a new connection from ``host`` may start its handshake, evicting the
        oldest unproven one when the places are taken (see the module docstring)."""
        waiting = list(self._pending.items())
        same = [(g, h) for g, h in waiting if h.host == host]
        if len(same) >= MAX_PENDING_PER_SOURCE:
            candidates = same
        elif len(waiting) >= MAX_PENDING:
            candidates = waiting
        else:
            return True
        unproven = [(h.started, g) for g, h in candidates if not h.proven]
        if not unproven:
            return False
        _, oldest = min(unproven, key=lambda item: item[0])
        self._pending.pop(oldest, None)
        oldest.kill(block=False)  # it reports and closes its own connection
        return True

    def _claim(self) -> bool:
        if self._closed or self._claimed:
            return False
        self._claimed = True
        pending = self._pending.get(gevent.getcurrent())
        if pending is not None:
            pending.proven = True
        return True

    def _handshake(self, sock: gsocket.socket, peer: str) -> None:
        """TLS when configured, then the hellos and proofs, all within the hello timeout.
        A wrong caller is turned away and the call keeps listening for the right one."""
        deadline = time.monotonic() + self._timeout
        conn: Link | gsocket.socket = sock
        try:
            if self._tls is not None:
                sock = accept_tls(sock, self._tls, self._timeout)
            link = conn = Link(sock, peer)
            hello = handshake.answer(link, self._token, self._hello(), deadline, self._claim)
        except handshake.Refused as exc:
            self._turn_away(conn, peer, exc.reason)
            return
        except (p.ProtocolError, LinkClosed, TimeoutError, OSError) as exc:
            self._unclaim()
            self._turn_away(conn, peer, str(exc) or type(exc).__name__, say_bye=False)
            return
        except gevent.GreenletExit:
            self._unclaim()
            self._turn_away(conn, peer, "evicted by newer connections", say_bye=False)
            raise
        self.close()
        self._on_caller(link, hello)

    def _unclaim(self) -> None:
        """A caller that had claimed the call and then failed to finish gives it back."""
        pending = self._pending.get(gevent.getcurrent())
        if pending is not None and pending.proven:
            pending.proven = False
            self._claimed = False

    def _turn_away(
        self, conn: Link | gsocket.socket, peer: str, why: str, say_bye: bool = True
    ) -> None:
        """Report and close a connection that may not join; tell it why when the
        connection can still carry a message."""
        self._on_rejected(peer, why)
        # Cut to what the peer's parser accepts: `why` can quote the peer's input.
        bye = p.Bye(reason=("rejected: " + why)[: p.MAX_REASON])
        if say_bye and isinstance(conn, Link):
            with contextlib.suppress(LinkClosed):
                conn.send(bye)
        elif say_bye and self._tls is None and not isinstance(conn, Link):
            # Not yet a Link (turned away before its hello): a plain-TCP dialer can still
            # read why, instead of guessing from a silent close.
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(p.encode(bye))
        conn.close()
