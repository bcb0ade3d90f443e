"""TLS for call links: the contexts a listener and a dialer use, and the handshake with a
deadline.

gevent's ssl module, named explicitly, so that TLS is cooperative whether or not the process
is monkey-patched (the node is; the in-process tests are not). Contexts are built once per
file set: the files were already checked by load_settings. Apart from link.py so that a link
reads as what carries messages; ``connect`` and the listener call in here for TLS.
"""

from __future__ import annotations

import functools
import socket
import ssl

from gevent import ssl as gssl


@functools.lru_cache(maxsize=4)
def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@functools.lru_cache(maxsize=4)
def client_context(ca: str | None) -> ssl.SSLContext:
    """Verifies the listener's certificate and host name against ``ca``; with no CA,
    verifies nothing (IM_TLS_INSECURE: encryption against eavesdroppers only, for tests)."""
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(ca)
    return ctx


def tls_handshake(sock: socket.socket, timeout: float, peer_role: str) -> None:
    """Complete the handshake within ``timeout`` or raise TlsError saying why; closes
    ``sock`` on failure."""
    sock.settimeout(max(timeout, 0.001))
    try:
        sock.do_handshake()  # type: ignore[attr-defined]
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TlsError(f"TLS certificate rejected: {exc.verify_message or exc}") from None
    except (OSError, ValueError) as exc:
        sock.close()
        why = str(exc) or type(exc).__name__
        if "timed out" not in why:
            why += f" (is the {peer_role} using TLS?)"
        raise TlsError(f"TLS handshake failed: {why}") from None
    sock.settimeout(None)


class TlsError(ConnectionError):
    """The TLS handshake failed: a plain-TCP peer, a certificate that does not verify, or
    a peer that did not finish in time. The message says which."""


def accept_tls(sock: socket.socket, tls: ssl.SSLContext, timeout: float) -> socket.socket:
    """Server side of the TLS handshake on an accepted connection (closed on failure)."""
    try:
        wrapped = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    tls_handshake(wrapped, timeout, "caller")
    return wrapped
