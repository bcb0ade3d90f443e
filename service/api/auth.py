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


def bearer_guard(token: str) -> Callable[[], Response | None]:
    expected = token.encode()

    def guard() -> Response | None:
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected):
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
