"""What a playout buffer reports: the ``PlayoutStats`` snapshot, and capture-to-playout
latency kept for a whole call.

Apart from the buffer (service/audio/playout.py) because these are its figures, not its
algorithm: the API's call quality (``stats.quality``) and the benchmarks read them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LATENCY_BIN_MS = 0.5
LATENCY_BINS = 4000  # 0-2 s; slower frames share the last bin


def latency_summary(hist: np.ndarray) -> dict[str, float | int]:
    """Percentiles (upper bin edges, so never flattering) of a latency histogram."""
    n = int(hist.sum())
    if n == 0:
        return {"n": 0}
    cumulative = np.cumsum(hist)

    def edge(q: float) -> float:
        return round(float(np.searchsorted(cumulative, q * n) + 1) * LATENCY_BIN_MS, 1)

    return {
        "n": n,
        "p50": edge(0.50),
        "p95": edge(0.95),
        "p99": edge(0.99),
        "max": round(float(np.flatnonzero(hist)[-1] + 1) * LATENCY_BIN_MS, 1),
    }


class LatencyRecord:
    """Capture-to-playout delay of every frame played: the recent ones in a ring, and every
    frame of the call in ``LATENCY_BIN_MS`` bins, which gives percentiles over a whole call
    (hours) in constant memory where the ring cannot. Written by the pulling thread only."""

    def __init__(self, ring: int) -> None:
        self._recent: deque[float] = deque(maxlen=ring)
        self._hist = np.zeros(LATENCY_BINS + 1, dtype=np.int64)
        self.total_ms = 0.0  # of every frame: the sum a Prometheus histogram carries

    def add(self, ms: float) -> None:
        self._recent.append(ms)
        self._hist[min(LATENCY_BINS, max(0, int(ms / LATENCY_BIN_MS)))] += 1
        self.total_ms += ms

    def histogram(self) -> np.ndarray:
        """A copy of the whole call's bins (``LATENCY_BIN_MS`` each; the last, slower)."""
        return self._hist.copy()

    def recent(self) -> list[float]:
        return list(self._recent)

    def summary(self) -> dict[str, float | int]:
        return latency_summary(self._hist)


@dataclass(frozen=True, slots=True)
class PlayoutStats:
    """A snapshot of the buffer's state and counters."""

    target_ms: float  # the delay it aims for now
    depth_ms: int  # what it holds, first to newest
    jitter_ms: float
    frames_received: int
    frames_played: int
    frames_concealed: int
    frames_fec: int
    frames_silence: int
    frames_dropped_late: int
    frames_dropped_overflow: int
    frames_dropped_catchup: int
    frames_duplicate: int
    frames_rejected: int
    frames_undecodable: int
    underruns: int
    resyncs: int
    latency_ms: dict[str, float | int]  # capture to playout over the whole call
