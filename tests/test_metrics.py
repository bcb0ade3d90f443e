"""GET /metrics: scraped after real calls, parsed with prometheus_client's own parser, and
checked against what GET /sessions/<id> says of the same calls.

Two model-less nodes in this process (each with its own registry: nothing is shared or
counted twice), one call between them with a turned-away connection on the side; then a
transcribed call between two node processes with tiny.en, for the ASR histograms. And who
may scrape: the API token, or IM_METRICS_TOKEN for /metrics alone.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from gevent import socket  # this process is not monkey-patched: the node must run meanwhile
from helpers import JFK_CLIP, ROOT, parse_metrics, wait_state, wait_until
from prometheus_client.parser import text_string_to_metric_families
from wire import dial_handshake

from service.localnodes import start_call, wait_for_final_transcripts

API_TOKEN = "api-token-0123456789"
METRICS_TOKEN = "metrics-token-0123456789"


def metrics_of(client: Any) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    return parse_metrics(r.get_data(as_text=True))


def test_metrics_after_a_call_match_its_session_stats(node_factory):
    from service.api import create_app

    a, b = node_factory("a"), node_factory("b")
    api_a, api_b = create_app(a).test_client(), create_app(b).test_client()
    listen = api_a.post(
        "/sessions", json={"mode": "listen", "port": 0, "input": "tone:440", "output": None}
    ).get_json()
    host, port = listen["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        dial_handshake(s, "a-wrong-token")  # turned away: counted on A's call
    wait_until(lambda: api_a.get(f"/sessions/{listen['id']}").get_json()["stats"][
        "rejected_connections"
    ] == 1)  # fmt: skip
    dial = api_b.post(
        "/sessions",
        json={
            "mode": "dial",
            "peer": listen["address"],
            "token": listen["token"],
            "input": "tone:660",
            "output": None,
        },
    ).get_json()
    wait_state(api_a, listen["id"], {"connected"})
    live = metrics_of(api_a)
    assert live["im_calls{state=connected}"] == 1
    wait_until(lambda: metrics_of(api_a)["im_frames_received_total{}"] >= 50, 10)

    # A hangs up: its answer carries the call's final live stats, playout included.
    ended = api_a.delete(f"/sessions/{listen['id']}").get_json()
    wait_state(api_b, dial["id"], {"ended"})
    m = metrics_of(api_a)
    stats, out = ended["stats"], ended["stats"]["output"]
    assert m["im_frames_sent_total{}"] == stats["frames_sent"] > 0
    assert m["im_frames_received_total{}"] == stats["frames_received"] > 0
    assert m["im_bytes_received_total{}"] == stats["bytes_received"]
    assert m["im_call_connections_rejected_total{}"] == stats["rejected_connections"] == 1
    assert m["im_audio_one_way_latency_seconds_count{}"] == out["latency_ms"]["n"] > 0
    for reason in ("late", "overflow", "catchup"):
        assert m[f"im_playout_frames_dropped_{reason}_total{{}}"] == out[f"frames_dropped_{reason}"]
    assert m["im_playout_underruns_total{}"] == out["underruns"]
    assert m["im_capture_frames_dropped_total{}"] == stats["input"].get("dropped", 0)
    assert m["im_calls_ended_total{state=ended}"] == 1
    assert m["im_calls{state=connected}"] == 0
    # The same figures as GET /sessions/<id> keeps them once the call has ended, on both.
    for api, call_id in ((api_a, listen["id"]), (api_b, dial["id"])):
        stored = api.get(f"/sessions/{call_id}").get_json()["stats"]
        m = metrics_of(api)
        for key in ("frames_sent", "frames_received", "bytes_sent", "bytes_received"):
            assert m[f"im_{key}_total{{}}"] == stored[key], key
        assert m["im_call_connections_rejected_total{}"] == stored["rejected_connections"]
        assert m["im_peer_segments_refused_total{}"] == stored["segments_refused"]
    # B counted only its own call: each node has its own registry.
    assert metrics_of(api_b)["im_call_connections_rejected_total{}"] == 0
    assert metrics_of(api_b)["im_frames_sent_total{}"] == m["im_frames_sent_total{}"]


def test_metrics_need_the_api_token_or_the_metrics_token(node_factory):
    from service.api import create_app

    node = node_factory("n", IM_API_TOKEN=API_TOKEN, IM_METRICS_TOKEN=METRICS_TOKEN)
    api = create_app(node).test_client()

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=bearer("wrong-token-0123456789")).status_code == 401
    assert api.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200
    assert api.get("/metrics", headers=bearer(API_TOKEN)).status_code == 200
    assert api.get("/sessions", headers=bearer(METRICS_TOKEN)).status_code == 401  # only /metrics
    assert api.get("/sessions", headers=bearer(API_TOKEN)).status_code == 200
    # Without an API token (loopback), IM_METRICS_TOKEN still guards /metrics alone.
    open_node = node_factory("open", IM_METRICS_TOKEN=METRICS_TOKEN)
    open_api = create_app(open_node).test_client()
    assert open_api.get("/metrics").status_code == 401
    assert open_api.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200
    assert open_api.get("/sessions").status_code == 200


@pytest.mark.slow
def test_asr_histograms_after_a_transcribed_call(node_pair):
    a, b = node_pair
    began = time.monotonic()
    listen, dial = start_call(
        a,
        b,
        listen={"input": "silence", "output": None},
        dial={"input": b.media(JFK_CLIP), "output": None},
    )
    wait_for_final_transcripts(b, dial["id"], a, listen["id"])
    settled_s = time.monotonic() - began  # no final can have been later than this
    b.call("DELETE", f"/sessions/{dial['id']}")
    wait_state(a, listen["id"], {"ended"})
    speaker = b.call("GET", f"/sessions/{dial['id']}")["stats"]
    hearer = a.call("GET", f"/sessions/{listen['id']}")["stats"]
    mb, ma = parse_metrics(b.call("GET", "/metrics")), parse_metrics(a.call("GET", "/metrics"))
    local = speaker["segments"]["local"]
    assert local > 0
    assert mb["im_segments_stored_local_total{}"] == local
    assert ma["im_segments_stored_remote_total{}"] == hearer["segments"]["remote"] == local
    # Every committed final of B's speaker is one observation of its final latency.
    assert mb["im_final_latency_seconds_count{}"] == local
    assert 0 < mb["im_final_latency_seconds_sum{}"] / local < settled_s
    finals = mb["im_asr_queue_wait_seconds_count{kind=final}"]
    assert finals == mb["im_asr_decoded_total{kind=final}"] >= local
    batches = mb["im_asr_batch_size_count{}"]
    assert batches == mb["im_asr_batch_decode_seconds_count{}"] > 0
    assert mb["im_asr_batch_size_sum{}"] == finals + mb["im_asr_decoded_total{kind=partial}"]
    assert mb["im_asr_backlog{}"] == 0 and mb["im_model_loaded{}"] == 1
    assert mb["im_asr_finals_rejected_total{}"] == 0
    # A transcribed nothing of its own (silence): no final latency observed there.
    assert ma["im_final_latency_seconds_count{}"] == 0


def test_the_grafana_dashboard_asks_only_for_metrics_the_node_serves(client):
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    asked = set()
    for expr in exprs:
        for alternation in re.findall(r'__name__=~"im_\(([^)]*)\)_total"', expr):
            asked |= {f"im_{name}" for name in alternation.split("|")}
        asked |= {
            re.sub(r"_(bucket|sum|count|total)$", "", m) for m in re.findall(r"\bim_\w+", expr)
        }
    asked.discard("im_")  # the alternation's prefix
    families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert asked and asked <= families, sorted(asked - families)
