"""A call whose audio goes through real PyAudio streams on both nodes: a tone played into
node A's microphone (a PulseAudio null sink's monitor) must come out of node B's speaker
(another null sink), carried by the TCP link in between."""

from __future__ import annotations

import numpy as np
import pytest
from audio_rig import AudioRig, dominant_hz, tone

from service.localnodes import start_call

pytestmark = pytest.mark.slow
RATE = 48_000


@pytest.fixture(scope="module")
def node_pair_env(audio_rig: AudioRig) -> dict[str, str]:
    return audio_rig.env


def test_far_side_hears_the_tone(audio_rig: AudioRig, node_pair):
    a, b = node_pair
    devices = a.call("GET", "/devices")
    assert "rig_mic_a" in {d["name"] for d in devices["inputs"]}
    assert "rig_spk_b" in {d["name"] for d in devices["outputs"]}

    # A's microphone and B's speaker are real devices; the other ends are headless.
    call_a, call_b = start_call(
        a,
        b,
        listen={"input": "rig_mic_a", "output": None, "transcribe": False},
        dial={"input": "silence", "output": "rig_spk_b", "transcribe": False},
    )
    listening = audio_rig.start_record("rig_spk_b_out", 4.0, RATE)
    audio_rig.play(tone(440.0, 3.0, RATE, amplitude=0.4), "rig_mic_a_in", RATE)
    heard = listening.wait(timeout=30)
    assert heard is not None

    level = np.abs(heard.astype(np.int32))
    loud = level > 0.05 * 32767
    assert loud.mean() > 0.3, "B's speaker stayed (almost) silent"
    hz = dominant_hz(heard[loud.argmax() :][: RATE * 2], RATE)
    assert abs(hz - 440.0) <= 10.0, f"B's speaker played {hz:.1f} Hz, not 440 Hz"

    snap_a = a.call("GET", f"/sessions/{call_a['id']}")["stats"]
    snap_b = b.call("GET", f"/sessions/{call_b['id']}")["stats"]
    assert snap_a["input"]["kind"] == "device" and snap_a["input"]["frames_captured"] > 100
    assert snap_b["output"]["kind"] == "device" and snap_b["output"]["frames_played"] > 100
