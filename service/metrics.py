"""The node's Prometheus metrics: histogram counts any thread may add to, and the registry
that GET /metrics renders (service/api/metrics.py).

Most of what /metrics shows is counted already where it happens (a call's link, its
playout buffer, the ASR scheduler): those are read when Prometheus scrapes, not counted
twice. What has no count yet is a distribution (how late finals are, how long a batch
takes), so this module gives one: ``Buckets``, fixed Prometheus buckets with a sum and a
count, safe to add to from the ASR worker's native thread (a native lock, never gevent's)
and cheap to read.

Each node has its own ``NodeMetrics`` (its own ``CollectorRegistry``, not the process-wide
one), so several nodes in one process (the tests) never share or clash.

For other parts of the node that count something new (search, for one): add a counter
here, on ``NodeMetrics``, created with ``registry=self.registry``, and increment it on the
hub; ``node.metrics`` is the instance. ``searched(outcome)`` is the one for GET /search.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily

from service.threadhub import native_lock

# Seconds. Finals on a CPU take from a fraction of a second to tens when the worker is
# behind; the audio path is milliseconds.
FINAL_LATENCY_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
QUEUE_WAIT_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DECODE_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_SIZE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ONE_WAY_LATENCY_S = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class Buckets:
    """A histogram's observations in fixed buckets (upper bounds, as Prometheus's ``le``)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._lock = native_lock()
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """From any thread; never blocks on more than bookkeeping."""
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """Counts per bucket (not cumulative, the last above every bound) and the sum."""
        with self._lock:
            return list(self._counts), self._sum

    def reset(self) -> None:
        with self._lock:
            self._counts = [0] * (len(self.bounds) + 1)
            self._sum = 0.0


def histogram(
    name: str,
    doc: str,
    bounds: Sequence[float],
    series: Iterable[tuple[Sequence[str], Sequence[int], float]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts: ``series`` gives, for each label set, its
    counts (as ``Buckets.snapshot``: one per bound, then one above) and its sum."""
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, counts, total in series:
        cumulative, running = [], 0
        for bound, n in zip((*bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        family.add_metric(list(label_values), cumulative, total)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class NodeMetrics:
    """One node's registry, and the counters that have no other home."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.search_queries = Counter(
            "im_search_queries",
            "Search queries (GET /search), by outcome: ok, bad_query, error.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "bad_query", "error"):
            self.search_queries.labels(outcome=outcome)  # shown at 0 before the first

    def searched(self, outcome: str = "ok") -> None:
        """Count one search query (on the hub): ``ok``, ``bad_query`` (a 400) or ``error``."""
        self.search_queries.labels(outcome=outcome).inc()
