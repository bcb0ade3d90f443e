"""Checks that run before anything else on every request: Host, Origin, and room for feeds.

**Host (DNS rebinding).** A web page can point a name it controls at 127.0.0.1 and then
drive this token-less loopback API from the victim's browser: the request carries that
foreign name in ``Host``. So the API answers only to its own names: ``localhost``,
``127.0.0.1``, ``::1``, ``IM_API_HOST`` when it is a specific address, this machine's
host name, and whatever ``IM_API_ALLOWED_HOSTS`` adds (``*``: any, for a proxy that
checks names itself). When the API is bound to a wildcard address, any IP-literal ``Host``
is accepted too: an IP literal names the address the client connected to, which is then
one of this node's, and rebinding needs a name (a page at an IP literal cannot re-resolve
it). Any port is accepted (proxies remap ports). Other names get **421 Misdirected
Request**, and so does a malformed ``Host``. A request without ``Host`` (HTTP/1.0, not
a browser) passes.

**Origin (cross-site requests).** A request that changes state (anything but GET, HEAD,
OPTIONS) and carries an ``Origin`` other than the node's own (the host and port the
request was sent to, as ``Host`` says; the scheme only sets the default port, so that a
TLS proxy in front still works), or ``Sec-Fetch-Site`` other than
``same-origin``/``none``, gets **403** and changes nothing. API clients that are not
browsers send neither header.

**Event feeds.** Each open feed holds one of the server's bounded HTTP connections for as
long as the call lasts (service.api.server); at most three quarters of them may be feeds,
so that short requests, /healthz among them, always find room. More get 503.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, Response, g, jsonify, request

from service.api.errors import error_body
from service.config import Settings

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FEED_ENDPOINT = "events.events"
_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
WARN_EVERY_S = 10.0


def feed_limit(settings: Settings) -> int:
    """How many event feeds may be open at once: see the module docstring."""
    return max(1, settings.http_max_connections * 3 // 4)


def own_host_names(settings: Settings) -> frozenset[str] | None:
    """The names (lower case, IPv6 without brackets) this node answers to; None: any."""
    if "*" in settings.api_allowed_hosts:
        return None
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname().lower().rstrip(".")}
    names.update(settings.api_allowed_hosts)
    if not _is_wildcard(settings.api_host):
        names.add(settings.api_host.lower().strip("[]"))
    return frozenset(names)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as (host, port); None when it
    is none of these. The host is lower case, without brackets or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
        if end < 0 or not _is_ip(host) or ":" not in host:
            return None
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = value.partition(":")
        if not sep:
            port_text = None
        host = host.rstrip(".")
        if not _NAME.fullmatch(host):
            return None
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    port = int(port_text)
    return (host, port) if port <= 65535 else None


def _origin(value: str) -> tuple[str, str, int] | None:
    """An ``Origin`` header as (scheme, host, port); None for ``null`` or anything odd."""
    try:
        parts = urlsplit(value.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
            return None
        parsed = parse_host(parts.netloc)
    except ValueError:
        return None
    if parsed is None:
        return None
    host, port = parsed
    return scheme, host, port if port is not None else (443 if scheme == "https" else 80)


class _Warner:
    """One WARNING line now and then with a count, not one per refused request: the
    refused requests come from whoever sends them, as often as they like."""

    def __init__(self) -> None:
        self._last = 0.0
        self._quiet = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < WARN_EVERY_S:
            self._quiet += 1
            return
        suffix = f" (and {self._quiet} more since the last such line)" if self._quiet else ""
        log.warning(message + suffix, *args)
        self._last, self._quiet = now, 0


def _refusal(status: int, code: str, message: str) -> Response:
    response = jsonify(error_body(code, message))
    response.status_code = status
    return response


def request_guard(settings: Settings) -> Callable[[], Response | None]:
    """The before_request hook for Host and Origin (see the module docstring)."""
    names = own_host_names(settings)
    any_ip = _is_wildcard(settings.api_host)
    warn_host, warn_origin = _Warner(), _Warner()

    def allowed(host: str) -> bool:
        return names is None or host in names or (any_ip and _is_ip(host))

    def guard() -> Response | None:
        raw_host = request.environ.get("HTTP_HOST")
        target: tuple[str, int | None] | None = None
        if raw_host is not None:
            target = parse_host(raw_host)
            if target is None or not allowed(target[0]):
                warn_host(
                    "refused %s %r for foreign Host %r", request.method, request.path, raw_host
                )
                return _refusal(
                    421,
                    "misdirected_request",
                    f"this node does not answer to the Host {raw_host[:100]!r} "
                    "(IM_API_ALLOWED_HOSTS lists more names it may answer to)",
                )
        if request.method in SAFE_METHODS:
            return None
        site = request.headers.get("Sec-Fetch-Site")
        origin_header = request.headers.get("Origin")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            refused = f"Sec-Fetch-Site: {site[:40]}"
        elif origin_header is not None and not _same_origin(origin_header, target, allowed):
            refused = f"Origin {origin_header[:100]!r}"
        else:
            return None
        warn_origin("refused cross-origin %s %r (%s)", request.method, request.path, refused)
        return _refusal(
            403,
            "cross_origin",
            f"requests that change state are refused from another origin ({refused})",
        )

    return guard


def _same_origin(
    value: str, target: tuple[str, int | None] | None, allowed: Callable[[str], bool]
) -> bool:
    origin = _origin(value)
    if origin is None:
        return False
    scheme, host, port = origin
    if target is None:  # no Host to compare with: the origin must at least be ours
        return allowed(host)
    target_host, target_port = target
    if target_port is None:
        target_port = 443 if scheme == "https" else 80
    return (host, port) == (target_host, target_port)


def register_feed_limit(app: Flask, limit: int) -> None:
    """At most `limit` event feeds at once. A slot is taken before the feed's view runs
    and given back when its response is closed (the client left, or the feed ended; the
    server notices a client that left at its next write, within KEEPALIVE_S)."""
    state = {"open": 0}

    def release() -> None:
        state["open"] -= 1

    @app.before_request
    def _take_slot() -> Response | None:
        if request.endpoint != FEED_ENDPOINT:
            return None
        if state["open"] >= limit:
            response = _refusal(
                503,
                "too_many_feeds",
                f"{limit} event feeds are open on this node, the most it serves; "
                "close one or retry later",
            )
            response.headers["Retry-After"] = "5"
            return response
        state["open"] += 1
        g.feed_slot = True
        return None

    @app.after_request
    def _hand_over(response: Response) -> Response:
        if g.pop("feed_slot", False):
            # Once, whichever comes first: the server closes the response (it always
            # does), or the response is dropped unclosed (an in-process test client).
            response.call_on_close(weakref.finalize(response, release))
        return response

    @app.teardown_request
    def _not_handed_over(_exc: BaseException | None) -> None:
        if g.pop("feed_slot", False):  # after_request never ran
            release()

    app.extensions["intellimeet.open_feeds"] = lambda: state["open"]
