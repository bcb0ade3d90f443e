"""Counters of every call this node has had, for GET /metrics: the ended calls' folded in
when they end, plus the live calls' read at the moment of asking.

A call keeps its own counts (its link, playout buffer, source, transcript, feed); they
vanish with the call. Prometheus counters must never go down, so the registry folds each
call into ``CallTotals`` in the same step that forgets it (nothing can run in between on
the hub), and a scrape adds the live calls to those totals.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from service.audio.playout_stats import LATENCY_BINS
from service.vocab import Speaker

if TYPE_CHECKING:
    from service.calls.session import CallSession

# name -> what it counts (the metric is im_<name>_total; docs/operating.md lists them)
COUNTERS: dict[str, str] = {
    "frames_sent": "Audio frames sent to peers.",
    "frames_received": "Audio frames received from peers.",
    "bytes_sent": "Bytes sent to peers (every message).",
    "bytes_received": "Bytes received from peers (every message).",
    "segments_stored_local": "Final segments of our speaker stored.",
    "segments_stored_remote": "Final segments of the peer stored.",
    "capture_frames_dropped": "Microphone frames lost: device overruns and the capture queue.",
    "outgoing_frames_dropped": "Captured frames dropped before the link could send them.",
    "playout_frames_dropped_late": "Peer frames dropped by the playout buffer: too late.",
    "playout_frames_dropped_overflow": "Peer frames dropped by the playout buffer: full.",
    "playout_frames_dropped_catchup": "Peer frames dropped by the playout buffer: catch-up.",
    "playout_frames_concealed": "Frames the playout buffer concealed (a frame was missing).",
    "playout_underruns": "Playout buffer underruns.",
    "playout_device_underflows": "Output device underflows.",
    "link_send_stalls": "Sends to a peer that stalled (the call then ends as peer_lost).",
    "call_connections_rejected": "Connections a listening call turned away (handshake).",
    "peer_segments_refused": "Peer segments refused for impossible times.",
    "feed_listeners_cut_off": "Live-feed (SSE) listeners cut off for falling behind.",
    "utterances_untranscribed": "Utterances still untranscribed when their call ended.",
    "calls_ended_untranscribed": "Calls that ended with utterances untranscribed.",
}


def call_counts(session: CallSession) -> dict[str, int]:
    """One call's counters as they stand, by the names of ``COUNTERS``."""
    link = session.link.stats if session.link is not None else None
    playout = session.sink.playout
    stored = session.transcript.stored
    untranscribed = session.untranscribed
    return {
        "frames_sent": link.frames_sent if link else 0,
        "frames_received": link.frames_received if link else 0,
        "bytes_sent": link.bytes_sent if link else 0,
        "bytes_received": link.bytes_received if link else 0,
        "segments_stored_local": stored.get(Speaker.LOCAL, 0),
        "segments_stored_remote": stored.get(Speaker.REMOTE, 0),
        "capture_frames_dropped": session.source.overruns,
        "outgoing_frames_dropped": session.media.frames_dropped_unsent if session.media else 0,
        "playout_frames_dropped_late": playout.frames_dropped_late,
        "playout_frames_dropped_overflow": playout.frames_dropped_overflow,
        "playout_frames_dropped_catchup": playout.frames_dropped_catchup,
        "playout_frames_concealed": playout.frames_concealed,
        "playout_underruns": playout.underruns,
        "playout_device_underflows": session.sink.device_underflows,
        "link_send_stalls": link.send_stalls if link else 0,
        "call_connections_rejected": session.rejected_connections,
        "peer_segments_refused": session.transcript.refused,
        "feed_listeners_cut_off": session.events.listeners_cut_off,
        "utterances_untranscribed": untranscribed,
        "calls_ended_untranscribed": 1 if untranscribed else 0,
    }


class CallTotals:
    """What ended calls counted, kept for the node's life (hub only)."""

    def __init__(self) -> None:
        self.ended: Counter[str] = Counter()  # by end state: ended | failed
        self._counts: Counter[str] = Counter()
        self._latency_bins = np.zeros(LATENCY_BINS + 1, dtype=np.int64)
        self._latency_ms = 0.0

    def fold(self, session: CallSession) -> None:
        """A call ended: keep its counts (the registry calls this as it forgets it)."""
        self.ended[str(session.state)] += 1
        self._counts.update(call_counts(session))
        latency = session.sink.playout.latency
        self._latency_bins += latency.histogram()
        self._latency_ms += latency.total_ms

    def counts(self, live: list[CallSession]) -> dict[str, int]:
        """Every counter: the ended calls' and the live ones' now."""
        out = Counter(dict.fromkeys(COUNTERS, 0))
        out.update(self._counts)
        for session in live:
            out.update(call_counts(session))
        return dict(out)

    def one_way_latency(self, live: list[CallSession]) -> tuple[np.ndarray, float]:
        """Capture-to-playout delay of every frame played: bins and the sum in ms."""
        bins, total = self._latency_bins.copy(), self._latency_ms
        for session in live:
            latency = session.sink.playout.latency
            bins += latency.histogram()
            total += latency.total_ms
        return bins, total
