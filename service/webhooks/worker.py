"""Delivering the outbox: one loop per endpoint, at least once, in order per call.

Each round claims the due heads of the endpoint's call queues (service/store/outbox.py:
at most one event per call, so a call's next event waits for its earlier one), sends up
to ``CONCURRENCY`` of them at once (different calls), deletes what was delivered and
reschedules what failed: ``1 s * 2**(tries-1)``, capped at IM_WEBHOOK_RETRY_MAX_S, with
jitter (half to all of it, so that many events that failed together do not come back
together). The outbox tells the loop when new events are committed; otherwise it sleeps
until the next one is due.

Bounded: before each round (at most once a second) the endpoint's rows are counted and
the oldest beyond IM_WEBHOOK_MAX_PENDING deleted, counted in ``dropped`` and logged at a
bounded rate; /metrics and GET /webhooks show both.

All of it runs in greenlets on the hub, and every HTTP try is cooperative or on a native
thread (sender.py): delivery never holds up a call. A database error skips a round (the
rows stay; they are tried later), logged at a bounded rate.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
from gevent.event import Event
from sqlalchemy.exc import SQLAlchemyError

from service.configcheck import WebhookEndpoint
from service.ratelimit import RateLimitedLog
from service.store.outbox import Due, Outbox
from service.webhooks.sender import Result, Sender

log = logging.getLogger(__name__)

CONCURRENCY = 4  # tries in flight per endpoint (each of a different call)
FIRST_RETRY_S = 1.0
PRUNE_EVERY_S = 1.0
MIN_ROUND_S = 0.25  # between rounds that sent nothing: new events come in bursts
IDLE_S = 5.0  # longest sleep without being told of new events
FAILURE_KINDS = ("status", "redirect", "timeout", "connection", "error")


def backoff_s(attempts: int, most_s: float) -> float:
    """Seconds before try ``attempts + 1``, after ``attempts`` failed ones (>= 1): doubling
    from FIRST_RETRY_S up to ``most_s``, then half to all of that at random."""
    delay = min(most_s, FIRST_RETRY_S * 2 ** min(attempts - 1, 40))
    return delay * (0.5 + 0.5 * random.random())


@dataclass
class EndpointStats:
    """What one endpoint's loop did since the node started (/metrics, GET /webhooks)."""

    delivered: int = 0
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    dropped: int = 0  # deleted undelivered: the outbox was at its bound
    pending: int = 0  # rows waiting, as of the last count
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None


class Lane:
    """One endpoint: its sender, its wake-up and its figures."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self.endpoint = endpoint
        self.sender = Sender(endpoint)
        self.woken = Event()
        self.stats = EndpointStats()
        self.pruned_at = 0.0


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        endpoints: tuple[WebhookEndpoint, ...],
        max_pending: int,
        retry_max_s: float,
    ) -> None:
        self._outbox = outbox
        self.lanes = {e.name: Lane(e) for e in endpoints}
        self._max_pending = max_pending
        self._retry_max_s = retry_max_s
        self._warn = RateLimitedLog(log, every_s=10.0)
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        """Point the outbox at the endpoints and start a loop for each (after the store's
        upgrade: the table must exist)."""
        names = tuple(self.lanes)
        self._outbox.endpoints = names
        self._outbox.wake = self.wake
        retried = self._outbox.retry_now(names)
        pending = self._outbox.pending()
        for name, n in pending.items():
            if name in self.lanes:
                self.lanes[name].stats.pending = n
            else:
                log.warning(
                    "%d webhook event(s) wait for endpoint %r, which this node does not "
                    "have (IM_WEBHOOK_URL, IM_WEBHOOKS); they stay in the outbox",
                    n,
                    name,
                )
        waiting = sum(pending.get(name, 0) for name in names)
        log.info(
            "webhooks to %d endpoint(s): %s; %d event(s) waiting from before (%d rescheduled)",
            len(names),
            ", ".join(names),
            waiting,
            retried,
        )
        self._greenlets = [gevent.spawn(self._run, lane) for lane in self.lanes.values()]

    def wake(self) -> None:
        """New events are committed (called by the Store after the commit, on the thread
        that ran it: one of its pool's, or the hub; gevent's Event.set is safe from either)."""
        for lane in self.lanes.values():
            lane.woken.set()

    def close(self) -> None:
        self._outbox.endpoints = ()
        gevent.killall(self._greenlets)
        for lane in self.lanes.values():
            lane.sender.close()

    # -- the loop ---------------------------------------------------------------------

    def _run(self, lane: Lane) -> None:
        name = lane.endpoint.name
        while True:
            lane.woken.clear()
            try:
                self._prune(lane)
                batch = self._outbox.due(name, CONCURRENCY)
                if batch:
                    self._send(lane, batch)
                    continue
                next_due = self._outbox.next_due(name)
            except SQLAlchemyError as exc:
                self._warn.warning(
                    f"{name}:db", "webhooks %s: the outbox cannot be read now: %s", name, exc
                )
                gevent.sleep(IDLE_S)
                continue
            gevent.sleep(MIN_ROUND_S)
            wait = IDLE_S if next_due is None else next_due - time.time()
            if wait > 0:
                lane.woken.wait(min(IDLE_S, wait))

    def _prune(self, lane: Lane) -> None:
        now = time.monotonic()
        if now - lane.pruned_at < PRUNE_EVERY_S:
            return
        lane.pruned_at = now
        name = lane.endpoint.name
        lane.stats.pending, dropped = self._outbox.prune(name, self._max_pending)
        if dropped:
            lane.stats.dropped += dropped
            self._warn.warning(
                f"{name}:dropped",
                "webhooks %s: outbox full (IM_WEBHOOK_MAX_PENDING=%d): dropped the %d oldest "
                "undelivered event(s), %d so far",
                name,
                self._max_pending,
                dropped,
                lane.stats.dropped,
            )

    def _send(self, lane: Lane, batch: list[Due]) -> None:
        tries = [gevent.spawn(lane.sender.send, due.event_id, due.body) for due in batch]
        gevent.joinall(tries)
        delivered: list[int] = []
        for due, g in zip(batch, tries, strict=True):
            result: Result = (
                g.value if g.successful() else Result(False, "error", repr(g.exception))
            )
            if result.ok:
                delivered.append(due.id)
                continue
            self._failed(lane, due, result)
        self._outbox.delivered(delivered)
        if delivered:
            lane.stats.delivered += len(delivered)
            lane.stats.last_delivered_at = time.time()
            lane.stats.pending = max(0, lane.stats.pending - len(delivered))

    def _failed(self, lane: Lane, due: Due, result: Result) -> None:
        attempts = due.attempts + 1
        wait = backoff_s(attempts, self._retry_max_s)
        self._outbox.failed(due.id, attempts, time.time() + wait, result.detail)
        stats = lane.stats
        stats.failed[result.reason] = stats.failed.get(result.reason, 0) + 1
        stats.last_error, stats.last_error_at = result.detail, time.time()
        name = lane.endpoint.name
        self._warn.warning(
            f"{name}:failed",
            "webhooks %s: %s %s not delivered (try %d): %s; next try in %.1f s",
            name,
            due.type,
            due.event_id,
            attempts,
            result.detail,
            wait,
        )

    def status(self) -> list[dict[str, object]]:
        """Per endpoint, for GET /webhooks: where it is and what happened to its events."""
        out: list[dict[str, object]] = []
        for name, lane in self.lanes.items():
            s = lane.stats
            out.append(
                {
                    "name": name,
                    "url": _shown(lane.endpoint.url),
                    "pending": s.pending,
                    "delivered": s.delivered,
                    "failed": dict(s.failed),
                    "dropped": s.dropped,
                    "max_pending": self._max_pending,
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at,
                    "last_delivered_at": s.last_delivered_at,
                }
            )
        return out


def _shown(url: str) -> str:
    """The URL without a query or credentials (either may be a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
