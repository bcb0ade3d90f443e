"""Peer addresses as people write them: ``HOST:PORT`` or ``[IPv6]:PORT``, parsed strictly and
formatted back.

Its own module because the API validates a peer address when a session is created, long
before (and without) any link: parsing is a pure function, tested as one.
"""

from __future__ import annotations

import ipaddress


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to a (host, port) pair; ValueError if malformed.

    Strict on purpose: ``str.isdigit`` and ``int`` take any script's digits, and a NUL or
    a control character in a host name would reach the resolver and the logs."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ValueError(f"peer must look like HOST:PORT, got {text!r}")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise ValueError(f"peer host must be a host name or IP address, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"[...] in a peer address must hold an IPv6 address, got {text!r}"
            ) from None
    elif ":" in host:
        raise ValueError(f"write IPv6 peers as [ADDR]:PORT, got {text!r}")
    elif any(c in "[]/@" for c in host):
        raise ValueError(f"peer host must be a host name or IP address, got {text!r}")
    value = int(port)
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be 1-65535, got {value}")
    return host, value


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
