"""Bounding what others can make the node do: a token bucket, and warnings at a bounded rate.

A peer that sends 20,000 stray messages must not write 20,000 log lines: the first of a kind
is logged at once, later ones at most once per ``every_s`` with how many were held back, so
the log says what happened and how often without being the peer's to fill.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """One per source (a call, a link); keyed by a short kind such as ``"stray"``."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.suppressed = 0

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            self.suppressed += 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            msg += " (and %d more like it in %.0f s)"
            args = (*args, held, now - last if last is not None else 0.0)
        self._log.warning(msg, *args)


class TokenBucket:
    """``rate`` a second, at most ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True
