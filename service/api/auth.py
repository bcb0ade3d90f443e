"""Bearer-token authentication for the control API.

Whoever can call the API can place calls from this host's microphone, so when a token is
configured every endpoint but the health check demands it. Comparison is constant-time and
the token is never echoed or logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from flask import Response, jsonify, request

from service.api.errors import error_body

log = logging.getLogger(__name__)
OPEN_ENDPOINTS = {"system.healthz"}  # container health checks carry no secrets


def bearer_guard(token: str, only: dict[str, str] | None = None) -> Callable[[], Response | None]:
    """``token`` opens every endpoint (none when empty); ``only`` maps an endpoint to a
    token that opens that one alone (IM_METRICS_TOKEN: a scraper need not hold the token
    that places calls)."""
    only = only or {}

    def guard() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        accepted = [t.encode() for t in (only.get(request.endpoint or ""), token) if t]
        if not accepted:
            return None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        given = presented.strip().encode()
        # Every token compared, each in constant time: which one matched takes no longer.
        matched = [hmac.compare_digest(given, t) for t in accepted]
        if scheme.lower() == "bearer" and any(matched):
            return None
        log.warning(
            "refused %s %r from %s: bad or missing token",  # %r: a path cannot forge lines
            request.method,
            request.path,
            request.remote_addr,
        )
        response = jsonify(
            error_body("unauthorized", "send the node's API token as 'Authorization: Bearer ...'")
        )
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="intellimeet"'
        return response

    return guard
