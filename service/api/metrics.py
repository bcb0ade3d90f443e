"""GET /metrics: the node in the Prometheus text format (prometheus_client).

Read when Prometheus asks, from the counts the node keeps anyway: the live calls and the
totals of the ended ones (service/calls/totals.py), the ASR engine's stats and timings,
the HTTP server's evictions, the webhook loops, plus what ``node.metrics`` counts itself
(service/metrics.py). Nothing here counts on the hot path. Every name is listed in
docs/operating.md (Metrics).

Behind the API token, or IM_METRICS_TOKEN when set (a scraper then needs only that one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from spectree import Response as Resp

from service.api.spec import spec
from service.asr.scheduler import SchedulerStats
from service.asr.worker import WorkerStats, WorkerTimings
from service.audio.playout_stats import LATENCY_BIN_MS
from service.calls.totals import COUNTERS
from service.metrics import FINAL_LATENCY_S, ONE_WAY_LATENCY_S, QUEUE_WAIT_S, Buckets, histogram
from service.node import Node

bp = Blueprint("metrics", __name__)
ENDPOINT = "metrics.metrics"  # what IM_METRICS_TOKEN opens (service/api/auth.py)
SERVER_KEY = "intellimeet.http_server"  # app.extensions: the BoundedWSGIServer, if any
PARTIAL_DROPS = {
    "superseded": "partials_superseded",
    "busy": "partials_skipped_busy",
    "stale": "partials_stale",
    "preempted": "partials_preempted",
}


@bp.get("/metrics")
@spec.validate(
    resp=Resp(HTTP_200=(None, "Prometheus text format (`text/plain; version=0.0.4`)")),
    tags=["system"],
)
def metrics() -> Response:
    """Prometheus text format (no JSON): see docs/operating.md#metrics."""
    node: Node = current_app.extensions["intellimeet.node"]
    scrape = _Scrape(node, current_app.extensions.get(SERVER_KEY))
    return Response(generate_latest(scrape), content_type=CONTENT_TYPE_LATEST)


class _Scrape:
    """What ``generate_latest`` reads: the node's registry, then the families made now."""

    def __init__(self, node: Node, server: Any) -> None:
        self.node = node
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield from self.node.metrics.registry.collect()
        yield from _calls(self.node)
        yield from _asr(self.node)
        yield from _webhooks(self.node)
        yield from _http(self.server)
        yield GaugeMetricFamily(
            "im_storage_failed",
            "1 while the last write to the store failed (as /healthz says), else 0.",
            value=1 if self.node.store.write_error else 0,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    name: str, doc: str, label: str, values: dict[str, float], kind: type = CounterMetricFamily
) -> Metric:
    family = kind(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _buckets(name: str, doc: str, b: Buckets) -> Metric:
    counts, total = b.snapshot()
    return histogram(name, doc, b.bounds, [((), counts, total)])


def _calls(node: Node) -> Iterator[Metric]:
    registry = node.registry
    live = registry.live()
    states = Counter(str(s.state) for s in live)
    yield _labelled(
        "im_calls",
        "Calls open now, by state.",
        "state",
        {s: states.get(s, 0) for s in ("listening", "connecting", "connected")},
        GaugeMetricFamily,
    )
    yield _labelled(
        "im_calls_ended",
        "Calls ended since start, by end state.",
        "state",
        dict(registry.totals.ended),
    )
    yield _labelled(
        "im_calls_refused",
        "New calls refused, by reason (too_many_calls: IM_MAX_CALLS; asr_saturated: no ASR "
        "headroom for live captions).",
        "reason",
        {"too_many_calls": registry.refused_too_many, "asr_saturated": registry.refused_saturated},
    )
    for name, value in registry.totals.counts(live).items():
        yield _counter(f"im_{name}", COUNTERS[name], value)
    bins, total_ms = registry.totals.one_way_latency(live)
    counts, start = [], 0
    for bound in ONE_WAY_LATENCY_S:
        end = round(bound * 1000 / LATENCY_BIN_MS)
        counts.append(int(bins[start:end].sum()))
        start = end
    counts.append(int(bins[start:].sum()))
    yield histogram(
        "im_audio_one_way_latency_seconds",
        "Capture (peer) to playout (here) of every frame played (clocks of both hosts).",
        ONE_WAY_LATENCY_S,
        [((), counts, total_ms / 1000)],
    )
    depths = [s.sink.playout.figures().depth_ms / 1000 for s in live if s.link is not None]
    yield _labelled(
        "im_playout_depth_seconds",
        "Audio waiting in the connected calls' playout buffers: the deepest, and the mean.",
        "stat",
        {"max": max(depths, default=0.0), "mean": sum(depths) / len(depths) if depths else 0.0},
        GaugeMetricFamily,
    )


def _asr(node: Node) -> Iterator[Metric]:
    engine = node.engine
    yield GaugeMetricFamily(
        "im_model_loaded",
        "1 once the Whisper model is loaded.",
        value=int(bool(engine and engine.loaded)),
    )
    # A node without a model (tests) shows the same names, at zero: one set for dashboards.
    stats = engine.stats if engine else {**WorkerStats().flat(), **asdict(SchedulerStats())}
    timings = engine.timings if engine else WorkerTimings()
    yield GaugeMetricFamily(
        "im_asr_backlog",
        "Utterances queued or being decoded, all calls.",
        value=engine.pending if engine else 0,
    )
    yield GaugeMetricFamily(
        "im_asr_utilisation",
        "Share of the time since start the ASR worker spent decoding.",
        value=engine.utilisation() if engine else 0.0,
    )
    headroom = engine.headroom() if engine else None
    yield GaugeMetricFamily(
        "im_asr_finals_busy_ratio",
        "Share of the last 20 s the ASR worker spent on finals (admission, IM_ASR_ADMIT_BUSY).",
        value=headroom.finals_busy if headroom else 0.0,
    )
    yield GaugeMetricFamily(
        "im_asr_finals_wait_median_seconds",
        "Median queue wait of the last 20 s's finals (admission, IM_ASR_ADMIT_WAIT_S).",
        value=(headroom.finals_wait_s or 0.0) if headroom else 0.0,
    )
    yield GaugeMetricFamily(
        "im_asr_saturated",
        "1 while new transcribing calls are refused (503 asr_saturated).",
        value=int(bool(headroom and headroom.saturated)),
    )
    yield _buckets(
        "im_final_latency_seconds",
        "End of speech to its final segment committed.",
        engine.final_latency if engine else Buckets(FINAL_LATENCY_S),
    )
    yield histogram(
        "im_asr_queue_wait_seconds",
        "Time a request waited for the ASR worker, by kind (final, partial).",
        QUEUE_WAIT_S,
        [((str(kind),), *b.snapshot()) for kind, b in timings.queue_wait.items()],
        labels=("kind",),
    )
    yield _buckets(
        "im_asr_batch_decode_seconds", "Time one batch took to decode.", timings.decode_s
    )
    yield _buckets(
        "im_asr_batch_size", "Requests decoded together in one batch.", timings.batch_size
    )
    yield _labelled(
        "im_asr_decoded",
        "Requests decoded, by kind.",
        "kind",
        {"final": stats["finals"], "partial": stats["partials"]},
    )
    yield _counter(
        "im_asr_finals_rejected",
        "Utterances refused because the ASR queue was full (WARNING 'ASR queue full').",
        stats["rejected_queue_full"],
    )
    yield _labelled(
        "im_asr_partials_dropped",
        "Partials not shown: superseded by a newer one, declined while busy, stale, or "
        "stopped mid-decode for a final (preempted).",
        "reason",
        {label: stats[key] for label, key in PARTIAL_DROPS.items()},
    )
    yield _labelled(
        "im_asr_finals_filtered",
        "Decoded finals dropped by the filters, by reason (no speech, hallucination...).",
        "reason",
        {k[len("dropped_") :]: v for k, v in stats.items() if k.startswith("dropped_")},
    )
    yield _counter(
        "im_asr_decode_errors", "Requests whose batch failed to decode.", stats["errors"]
    )


def _webhooks(node: Node) -> Iterator[Metric]:
    lanes = node.webhooks.lanes if node.webhooks is not None else {}
    yield _labelled(
        "im_webhook_deliveries",
        "Webhook events delivered (answered 2xx), by endpoint.",
        "endpoint",
        {name: lane.stats.delivered for name, lane in lanes.items()},
    )
    failures = CounterMetricFamily(
        "im_webhook_failures",
        "Webhook tries that failed, by endpoint and reason (status, redirect, timeout, "
        "connection, error).",
        labels=["endpoint", "reason"],
    )
    for name, lane in lanes.items():
        for reason, n in lane.stats.failed.items():
            failures.add_metric([name, reason], n)
    yield failures
    yield _labelled(
        "im_webhook_events_dropped",
        "Undelivered webhook events deleted because the outbox was at IM_WEBHOOK_MAX_PENDING.",
        "endpoint",
        {name: lane.stats.dropped for name, lane in lanes.items()},
    )
    yield _labelled(
        "im_webhook_pending",
        "Webhook events waiting in the outbox, by endpoint (as of the last count, <= 1 s).",
        "endpoint",
        {name: lane.stats.pending for name, lane in lanes.items()},
        GaugeMetricFamily,
    )


def _http(server: Any) -> Iterator[Metric]:
    yield _counter(
        "im_http_connections_evicted",
        "Idle HTTP connections closed to make room (IM_HTTP_MAX_CONNECTIONS).",
        getattr(server, "evicted", 0),
    )
    yield _counter(
        "im_http_connections_refused",
        "HTTP connections answered 503 because every connection was busy.",
        getattr(server, "refused", 0),
    )
