"""The control API's HTTP server: gevent's pywsgi, with bounds on connections and on time.

Plain pywsgi accepts every connection and waits forever for its request, so silent or
slow connections pile up until the process runs out of descriptors, and then the API,
new calls and the database all fail together. This server bounds both:

* **Connections.** At most ``max_connections`` are open at once. When all are taken, a new
  one evicts the connection that has waited longest *without a complete request head*
  (a silent socket, a slow sender, an idle keep-alive). A client that sends its request
  when it connects therefore always gets in, however many silent sockets someone opens;
  the bound on descriptors holds all the same. Only when every connection is in the
  middle of a request (event feeds, mostly: see service.api.guard, which keeps some room
  free of them) is a newcomer answered 503 and closed.
* **Time.** A request head (request line and header fields) must be complete within
  ``idle_timeout_s`` of the connection becoming idle: accepted, or its previous response
  sent. While a request is served, one socket read or write that cannot finish within
  ``idle_timeout_s`` ends the connection (a body that never comes, a client that stopped
  reading). An event feed that waits for its next event neither reads nor writes, so it
  is never cut for being quiet.
* **Size.** The request line is at most 8 KiB (pywsgi answers 414) and the header fields
  at most ``MAX_HEADER_BYTES`` in ``MAX_HEADER_LINES`` lines (431): a head costs bounded
  memory per connection. Malformed heads get a 400 and are logged at DEBUG only, so that
  nobody can fill the log by sending garbage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections import OrderedDict
from io import BytesIO
from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer, headers_factory

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
WARN_EVERY_S = 10.0  # at most one "connections full" warning this often


def _raw_response(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A complete error response in the API's JSON error shape, for answers given before
    (or instead of) the application."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


BUSY_RESPONSE = _raw_response(
    "503 Service Unavailable",
    "too_many_connections",
    "every HTTP connection of this node is serving a request; retry shortly",
    "Retry-After: 1\r\n",
)
HEAD_TOO_LARGE_RESPONSE = _raw_response(
    "431 Request Header Fields Too Large",
    "request_header_fields_too_large",
    f"request header fields must fit in {MAX_HEADER_BYTES} bytes and {MAX_HEADER_LINES} lines",
)
LINE_TOO_LONG_RESPONSE = _raw_response(
    "414 URI Too Long", "uri_too_long", "the request line must be shorter than 8192 bytes"
)
BAD_REQUEST_RESPONSE = _raw_response(
    "400 Bad Request", "bad_request", "malformed HTTP request head"
)


class HeadTooLarge(ValueError):
    """The header fields exceed MAX_HEADER_BYTES or MAX_HEADER_LINES."""


class BoundedHandler(WSGIHandler):
    """pywsgi's handler, reporting its phases to the server (see the module docstring)."""

    server: BoundedWSGIServer

    def handle(self) -> None:
        self.socket.settimeout(self.server.idle_timeout_s)
        try:
            super().handle()
        except OSError as exc:  # the client left while we sent it an error response
            log.debug("HTTP connection from %s ended: %s", self.client_address, exc)

    def handle_one_request(self) -> Any:
        self.server.head_started(self)
        try:
            result = super().handle_one_request()
        finally:
            self.server.head_done(self)
        if isinstance(result, tuple) and result[0] == "414":
            return ("414", LINE_TOO_LONG_RESPONSE)
        return result

    def read_request(self, raw_requestline: str) -> bool:
        try:
            return super().read_request(raw_requestline)
        finally:
            # The head is complete (or refused): from here on no head deadline applies
            # and this connection is no longer the one to evict.
            self.server.head_done(self)

    def MessageClass(self, fp: Any, *args: Any) -> Any:
        """Read the header fields within a byte and line budget, then parse them as pywsgi
        does (http.client alone allows 100 lines of 64 KiB each)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = fp.readline(MAX_HEADER_BYTES + 1 - total)
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise HeadTooLarge(f"header fields over {MAX_HEADER_BYTES} bytes")
            if line in (b"\r\n", b"\n", b""):
                break
            if len(lines) >= MAX_HEADER_LINES:
                raise HeadTooLarge(f"more than {MAX_HEADER_LINES} header lines")
            lines.append(line)
        return headers_factory(BytesIO(b"".join(lines) + b"\r\n"))

    def _handle_client_error(self, ex: BaseException) -> Any:
        # pywsgi's version prints a traceback for anything but ValueError and logs every
        # bad request at ERROR level: a client could fill the log.
        if isinstance(ex, OSError):  # the connection was cut or reset mid-head
            return None
        log.debug("bad HTTP request from %s: %s", self.client_address, ex)
        if isinstance(ex, HeadTooLarge):
            return ("431", HEAD_TOO_LARGE_RESPONSE)
        return ("400", BAD_REQUEST_RESPONSE)

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        # A read or write that ran past the idle timeout while serving a request (a body
        # that never came, a client that stopped reading): close, no traceback.
        if isinstance(v, TimeoutError):
            log.debug("HTTP connection from %s timed out mid-request", self.client_address)
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


class BoundedWSGIServer(WSGIServer):
    """pywsgi's server with at most ``max_connections`` connections and a deadline for
    every request head (see the module docstring)."""

    handler_class = BoundedHandler
    # Connections accepted per turn of the event loop. Each holds a descriptor before it
    # is admitted (or evicts another), so this is how far the bound may be overshot.
    max_accept = 16

    def __init__(
        self, listener: Any, application: Any, max_connections: int, idle_timeout_s: float, **kw
    ) -> None:
        super().__init__(listener, application, **kw)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._open: set[BoundedHandler] = set()
        # Connections waiting for a request head, the longest-waiting first, each with
        # the timer that cuts it at its deadline.
        self._waiting: OrderedDict[BoundedHandler, Any] = OrderedDict()
        self.evicted = 0  # counters for the "full" warning
        self.refused = 0
        self._warned_at = 0.0

    def handle(self, sock: socket.socket, address: Any) -> None:
        if len(self._open) >= self.max_connections and not self._evict_one():
            self._refuse(sock)
            return
        handler = self.handler_class(sock, address, self)
        self._open.add(handler)
        try:
            handler.handle()
        finally:
            self._open.discard(handler)
            self.head_done(handler)

    def head_started(self, handler: BoundedHandler) -> None:
        self.head_done(handler)
        timer = self.loop.timer(self.idle_timeout_s)
        timer.start(self._expire, handler)
        self._waiting[handler] = timer

    def head_done(self, handler: BoundedHandler) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.stop()
            timer.close()

    def _expire(self, handler: BoundedHandler) -> None:
        """Runs in the hub when a head deadline passes: never block here."""
        self._cut(handler)

    def _cut(self, handler: BoundedHandler) -> None:
        self.head_done(handler)
        sock = getattr(handler, "socket", None)
        if sock is not None:
            # Wakes the handler's pending read with an error; it then closes the socket
            # itself, through pywsgi's usual path.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _evict_one(self) -> bool:
        if not self._waiting:
            return False
        victim = next(iter(self._waiting))
        self.evicted += 1
        self._cut(victim)
        self._warn_full()
        return True

    def _refuse(self, sock: socket.socket) -> None:
        self.refused += 1
        self._warn_full()
        try:
            sock.settimeout(1.0)
            sock.sendall(BUSY_RESPONSE)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "HTTP connections full (%d): %d idle connection(s) evicted and %d refused "
                "so far (IM_HTTP_MAX_CONNECTIONS)",
                self.max_connections,
                self.evicted,
                self.refused,
            )
