"""When each received frame is due, and how late frames arrive against that.

The arrival side of a playout buffer (service/audio/playout.py), kept apart from it because
it is an estimate of its own, fed only by the receive greenlet (no lock): the buffer asks it
for the schedule's ``base`` and the ``jitter``.

- **Schedule.** Frame ``s`` is due at ``base + s·20 ms`` on the receiver's clock, where
  ``base`` is the smallest ``arrival - s·20 ms`` seen in the last few seconds: the schedule
  the earliest packets keep. Sequence numbers, not the sender's capture clock, define it, so a
  peer with an odd clock cannot confuse the buffer (drift between the two sound cards is
  followed by the sliding minimum).
- **Jitter** is a high quantile of how late frames arrive against that schedule, over a
  sliding window, counting only the first frame of a burst.

The window is also kept sorted, so each arrival costs one binary-search insert and delete
(``SortedWindow``) where a fresh quantile over the whole window cost a numpy sort: this runs
for nearly every frame of every call, and the numpy version was about a seventh of a busy
node's CPU (py-spy, 20 calls).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

from service.frames import FRAME_MS

FRAME_S = FRAME_MS / 1000
BURST_GAP_S = 0.004  # arrivals closer than this came in one burst


class Schedule:
    """See the module docstring. ``jitter`` is read by the puller (a float store is atomic)."""

    def __init__(self, window_s: float, quantile: float) -> None:
        self.quantile = quantile
        self._last_ext: int | None = None
        self._last_arrival: float | None = None
        self._transit = SortedWindow(max(10, round(window_s / FRAME_S)))
        self.base = 0.0  # earliest schedule: min(arrival - seq·20 ms) over the window
        self.jitter = 0.0  # seconds

    def extend(self, seq: int) -> int:
        """u32 wire sequence numbers to an unbounded count (wraps after 994 days at 50/s,
        but a peer may start anywhere)."""
        if self._last_ext is None:
            ext = seq
        else:
            delta = (seq - self._last_ext) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32
            ext = self._last_ext + delta
        if self._last_ext is None or ext > self._last_ext:
            self._last_ext = ext
        return ext

    def arrived(self, ext: int, now: float) -> None:
        """Frame ``ext`` (extended) arrived at ``now``."""
        # A frame that lands right behind the previous one queued behind it (TCP delivers in
        # order): its lateness is its leader's, already counted. Counting every frame of a
        # burst would let one stall dominate the quantile for the whole window.
        if self._last_arrival is None or now - self._last_arrival > BURST_GAP_S:
            window = self._transit
            window.append(now - ext * FRAME_S)
            self.base = window.min()
            self.jitter = window.quantile(self.quantile) - self.base
        self._last_arrival = now

    def restart(self) -> None:
        """Forget the window (the buffer restarted on a sequence jump)."""
        self._transit.clear()
        self._last_arrival = None


class SortedWindow:
    """The last ``size`` values, in arrival order and in sorted order: the minimum and a
    quantile in O(1), an append in O(log n) plus a short memmove."""

    def __init__(self, size: int) -> None:
        self._arrived: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._sorted)

    def append(self, value: float) -> None:
        arrived = self._arrived
        if len(arrived) == arrived.maxlen:
            oldest = arrived[0]
            del self._sorted[bisect_left(self._sorted, oldest)]
        arrived.append(value)
        insort(self._sorted, value)

    def clear(self) -> None:
        self._arrived.clear()
        self._sorted.clear()

    def min(self) -> float:
        return self._sorted[0]

    def quantile(self, q: float) -> float:
        """As ``numpy.quantile(values, q)`` (its default, linear method) computes it."""
        values = self._sorted
        position = q * (len(values) - 1)
        below = math.floor(position)
        above = min(below + 1, len(values) - 1)
        a, b, t = values[below], values[above], position - below
        # numpy's lerp: from the nearer end, so that t = 0 and t = 1 give a and b exactly.
        return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
