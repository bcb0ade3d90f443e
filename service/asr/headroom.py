"""Whether the one ASR worker can take another transcribing call: its measured headroom.

Finals are the load that matters: partials are elastic (the scheduler drops them first, and
a worker with nothing else to do fills its time with them), so a worker busy with partials
has room, and a worker busy with finals does not. Over a sliding window the worker reports,
per batch, the time it spent on finals and how long each final waited in the queue; the
node is *saturated* when either

- finals would keep the worker busy for more than ``busy_max`` of the window with one more
  call: the window's share spent on finals, times (n + 1) / n for the n streams whose finals
  it decoded (the next call's finals would have to queue behind them), or
- the window's median final waited longer than ``wait_max_s`` (they queue already).

Why a projection, not the share alone: a worker's latency grows without bound once finals
fill it, so the call that fills it is the one to refuse. Measured (scripts/bench_admission,
tiny.en, this 2-core CPU): 3 calls kept it 75 % busy and a 4th, admitted under a bound on
the share alone, took it to 100 %: every call's p95 then grew 27 % in the next minute.

A node that admits calls only while neither holds keeps the running calls' caption latency
(issue 15: capacity-aware admission). Listening calls that wait for a peer send nothing to
the worker, so they count for nothing here, and a call that has ended counts no more
(``forget``, at the end of its hang-up drain). Nothing here knows of a model or a thread;
time comes from an injectable clock (tests/test_headroom.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from statistics import median

from service.threadhub import native_lock

WINDOW_S = 20.0  # long enough to hold several utterances of every call
BUSY_MAX = 0.8  # share of the window the worker may spend on finals
WAIT_MAX_S = 2.0  # median queue wait of finals: past this, captions are already late
MAX_ENTRIES = 4096  # bound: a GPU worker decodes many batches a second


@dataclass(frozen=True)
class Verdict:
    saturated: bool
    finals_busy: float  # share of the window spent decoding finals
    finals_wait_s: float | None  # median queue wait of the window's finals; None: none
    reason: str | None = None  # why it is saturated, for the 503's message
    streams: int = 0  # streams whose finals the window decoded
    projected_busy: float = 0.0  # finals_busy with one more stream like those


class Headroom:
    """Fed from the worker thread (`observe`), read from the hub (`verdict`): a native lock
    guards the window."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        busy_max: float = BUSY_MAX,
        wait_max_s: float = WAIT_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.busy_max = busy_max
        self.wait_max_s = wait_max_s
        self._clock = clock
        self._lock = native_lock()
        # One entry per final decoded: (when its batch ended, its share of the batch's
        # time, how long it had waited, its stream)
        self._finals: deque[tuple[float, float, float, Hashable]] = deque(maxlen=MAX_ENTRIES)

    def observe(
        self,
        took_s: float,
        batch_size: int,
        final_waits: list[float],
        streams: Iterable[Hashable] = (),
    ) -> None:
        """A batch of ``batch_size`` requests took ``took_s``; ``final_waits``: how long
        each of its finals had waited; ``streams``: whose finals they were. Its time is
        shared among its items."""
        if batch_size <= 0:
            return
        share = took_s / batch_size
        who = list(streams) or [None] * len(final_waits)
        now = self._clock()
        with self._lock:
            for wait, stream in zip(final_waits, who, strict=False):
                self._finals.append((now, share, wait, stream))

    def forget(self, stream: Hashable) -> None:
        """``stream`` has ended: its finals are no load any more. A call that just hung up
        would otherwise count against the next one for a whole window (a new call was
        refused right after a busy one ended, with nothing else running)."""
        with self._lock:
            kept = [f for f in self._finals if f[3] != stream]
            self._finals.clear()
            self._finals.extend(kept)

    def verdict(self) -> Verdict:
        now = self._clock()
        since = now - self.window_s
        with self._lock:
            while self._finals and self._finals[0][0] < since:
                self._finals.popleft()
            busy = sum(f[1] for f in self._finals)
            waits = [f[2] for f in self._finals]
            streams = len({f[3] for f in self._finals if f[3] is not None})
        finals_busy = min(1.0, busy / self.window_s)
        projected = min(1.0, finals_busy * (streams + 1) / streams) if streams else finals_busy
        wait = median(waits) if waits else None
        reason = None
        if projected > self.busy_max:
            reason = (
                f"finals kept the ASR worker {finals_busy:.0%} busy over {self.window_s:g} s"
                + (f" ({streams} streams; about {projected:.0%} with one more)" if streams else "")
            )
        elif wait is not None and wait > self.wait_max_s:
            reason = f"finals wait {wait:.1f} s for the ASR worker (median)"
        return Verdict(
            reason is not None, round(finals_busy, 3), wait, reason, streams, round(projected, 3)
        )

    def reset(self) -> None:
        with self._lock:
            self._finals.clear()
