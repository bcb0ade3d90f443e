"""One try of one event: an HTTP POST that is bounded in time and follows no redirect.

A 2xx answer is a delivery. Anything else is a failure to retry: a 3xx too, because a
redirect could send the signed body to another host (the receiver should be configured
with its final URL), and the response body is never read, so a receiver cannot make the
node hold a large answer. A try takes at most ``CONNECT_S`` to connect, ``READ_S`` between
two reads, and ``TRY_S`` in all.

Under gevent's monkey-patching (``python -m service``) requests' sockets are cooperative,
so a try runs in the worker's greenlet and the hub serves calls meanwhile. In a process
that is not patched (tests that run a node in-process) the same try runs on one of the
hub's native threads, so it still never blocks the hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gevent
import requests
from gevent import monkey

from service.configcheck import WebhookEndpoint
from service.webhooks import signing

CONNECT_S = 5.0
READ_S = 10.0
TRY_S = 30.0  # and below service/store/outbox.py's CLAIM_S, so a claim outlives its try
USER_AGENT = "intellimeet-node-webhooks/1"


@dataclass(frozen=True)
class Result:
    ok: bool
    reason: str = ""  # failure kind: status | redirect | timeout | connection | error
    detail: str = ""  # for the log and the status view: "HTTP 503", the exception


class Sender:
    """One per endpoint (it keeps the endpoint's connections alive between tries)."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self.endpoint = endpoint
        self._http = self._session()
        self._cooperative = monkey.is_module_patched("socket")

    @staticmethod
    def _session() -> requests.Session:
        http = requests.Session()
        http.headers["user-agent"] = USER_AGENT
        http.trust_env = False  # no proxy or .netrc from the environment
        return http

    def send(self, msg_id: str, body: str) -> Result:
        """Try once; never raises."""
        if self._cooperative:
            try:
                with gevent.Timeout(TRY_S):
                    return self._post(msg_id, body)
            except gevent.Timeout:
                # Cut mid-request: its connection may be half used, so start afresh.
                self._http.close()
                self._http = self._session()
                return Result(False, "timeout", f"no answer within {TRY_S:.0f} s")
        return gevent.get_hub().threadpool.apply(self._post, (msg_id, body))

    def _post(self, msg_id: str, body: str) -> Result:
        key = self.endpoint.key
        try:
            response = self._http.post(
                self.endpoint.url,
                data=body.encode("utf-8"),
                headers=signing.headers(key, msg_id, int(time.time()), body),
                timeout=(CONNECT_S, READ_S),
                allow_redirects=False,
                stream=True,  # the body is not read: only the status matters
            )
        except requests.Timeout as exc:
            return Result(False, "timeout", _short(exc))
        except requests.ConnectionError as exc:
            return Result(False, "connection", _short(exc))
        except requests.RequestException as exc:
            return Result(False, "error", _short(exc))
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return Result(True)
        if 300 <= status < 400:
            return Result(False, "redirect", f"HTTP {status} (redirects are not followed)")
        return Result(False, "status", f"HTTP {status}")

    def close(self) -> None:
        self._http.close()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
