"""Capacity-aware admission with real node processes, tiny.en and real speech: a node
whose ASR worker has no headroom answers a new transcribing call 503 asr_saturated with
Retry-After, still takes a call transcribed after it ends, and a node whose worker has
nothing to do (its calls only listen to the other side) is not held back by them."""

from __future__ import annotations

import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from service.localnodes import start_call

pytestmark = pytest.mark.slow

CLIP = "en_librispeech_1995-1837-0001.wav"


@pytest.fixture(scope="module")
def node_pair_env() -> dict[str, str]:
    # Any final that waited at all for the worker leaves no headroom: the bound, not the
    # speed of this machine, decides (the benchmark measures real thresholds).
    return {"IM_ASR_ADMIT_WAIT_S": "1e-9"}


def test_a_saturated_node_refuses_live_captions_and_takes_after_the_call(node_pair, speech_dir):
    a, b = node_pair
    listen = {"mode": "listen", "port": 0, "input": "silence", "output": None}
    assert b.request("POST", "/sessions", json=listen).status_code == 201  # idle: admitted
    _, call_b = start_call(
        a,
        b,
        listen={"input": "silence", "output": None},
        dial={"input": b.media(speech_dir / CLIP), "output": None},
    )
    wait_until(
        lambda: b.call("GET", f"/sessions/{call_b['id']}/transcript")["segments"],
        timeout=90,
        what="B's first final",
    )
    refused = b.request("POST", "/sessions", json=listen)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "asr_saturated" and '"transcribe": "after"' in error["message"]
    assert int(refused.headers["Retry-After"]) > 0
    after = b.request("POST", "/sessions", json={**listen, "transcribe": "after"})
    assert after.status_code == 201, after.text
    assert after.json()["transcribe"] == "after"
    stored = b.call("GET", f"/sessions/{after.json()['id']}")
    assert stored["transcribe"] == "after"
    silent = b.request("POST", "/sessions", json={**listen, "transcribe": False})
    assert silent.status_code == 201, silent.text
    unrecorded = b.request(
        "POST", "/sessions", json={**listen, "transcribe": "after", "record": False}
    )
    assert unrecorded.status_code == 422
    assert unrecorded.json()["error"]["code"] == "needs_recording"
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(b.request("GET", "/metrics").text)
        for sample in family.samples
    }
    assert scraped[("im_calls_refused_total", (("reason", "asr_saturated"),))] == 1
    assert scraped[("im_asr_saturated", ())] == 1
    # A decoded nothing: B transcribes its own speaker and sends A the text.
    assert a.request("POST", "/sessions", json=listen).status_code == 201


def test_only_true_false_or_after_are_accepted(node_pair):
    a, _ = node_pair
    body = {"mode": "listen", "port": 0, "input": "silence", "output": None}
    for bad in ("yes", "later", 1, None):
        r = a.request("POST", "/sessions", json={**body, "transcribe": bad})
        assert r.status_code in (400, 422), (bad, r.status_code, r.text)
