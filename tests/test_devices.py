"""service.audio.devices against real, clocked virtual devices (scripts/audio-rig).

Every device operation runs in a subprocess with the rig's environment (see tests/audio_rig.py
for why); the subprocess prints one JSON object, which the test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from audio_rig import ROOT, AudioRig, audio_rig_fixture, dominant_hz, tone  # noqa: F401

RIG_INPUTS = ["rig_mic_a", "rig_spk_a_out", "rig_mic_b", "rig_spk_b_out"]
RIG_OUTPUTS = ["rig_spk_a", "rig_mic_a_in", "rig_spk_b", "rig_mic_b_in"]

LIST = r"""
import json
from service.audio.devices import list_devices
devices, reason = list_devices()
print(json.dumps({"devices": [d.to_json() for d in devices], "reason": reason}))
"""


def test_list_devices_shows_the_rig(audio_rig: AudioRig) -> None:
    out = audio_rig.run_python(LIST)
    assert out["reason"] is None
    by_name = {d["name"]: d for d in out["devices"]}
    for name in RIG_INPUTS:
        assert by_name[name]["max_input_channels"] > 0, by_name[name]
        assert by_name[name]["max_output_channels"] == 0, by_name[name]
    for name in RIG_OUTPUTS:
        assert by_name[name]["max_output_channels"] > 0, by_name[name]
        assert by_name[name]["max_input_channels"] == 0, by_name[name]
    d = by_name["rig_mic_a"]
    assert set(d) == {
        "index",
        "name",
        "host_api",
        "max_input_channels",
        "max_output_channels",
        "default_sample_rate",
    }
    assert d["host_api"] == "ALSA"
    assert d["default_sample_rate"] > 0


RESOLVE = r"""
import json
from service.audio.devices import DeviceError, default_device, resolve

def attempt(spec, kind):
    try:
        d = resolve(spec, kind)
        return {"ok": True, "index": d.index, "name": d.name}
    except DeviceError as exc:
        return {"ok": False, "error": str(exc), "is_value_error": isinstance(exc, ValueError)}

mic = resolve("rig_mic_a", "input")
cases = {
    "name": attempt("rig_mic_a", "input"),
    "index_int": attempt(mic.index, "input"),
    "index_str": attempt(str(mic.index), "input"),
    "substring": attempt("SPK_B_OUT", "input"),
    "stem_narrowed_by_kind": attempt("mic_b", "input"),
    "output_by_name": attempt("rig_spk_a", "output"),
    "unknown": attempt("no-such-microphone", "input"),
    "output_only_as_input": attempt("rig_spk_a", "input"),
    "input_only_as_output": attempt(mic.index, "output"),
    "ambiguous": attempt("rig_mic", "input"),
    "bad_index": attempt(9999, "input"),
    "default_input": default_device("input").max_input_channels > 0,
    "default_output": default_device("output").max_output_channels > 0,
}
print(json.dumps(cases))
"""


def test_resolve(audio_rig: AudioRig) -> None:
    out = audio_rig.run_python(RESOLVE)
    mic_index = out["name"]["index"]
    assert out["name"] == {"ok": True, "index": mic_index, "name": "rig_mic_a"}
    assert out["index_int"] == out["name"]
    assert out["index_str"] == out["name"]
    assert out["substring"]["name"] == "rig_spk_b_out"
    # "mic_b" also matches the playback device rig_mic_b_in; only the capture one fits.
    assert out["stem_narrowed_by_kind"]["name"] == "rig_mic_b"
    assert out["output_by_name"]["name"] == "rig_spk_a"

    unknown = out["unknown"]
    assert not unknown["ok"] and unknown["is_value_error"]
    assert "no-such-microphone" in unknown["error"]
    assert "rig_mic_a" in unknown["error"]  # says what exists
    assert "rig_spk_a'" not in unknown["error"]  # ...of the right kind only

    wrong = out["output_only_as_input"]
    assert not wrong["ok"]
    assert "rig_spk_a" in wrong["error"] and "no input channels" in wrong["error"]
    assert "rig_mic_a" in wrong["error"]

    wrong = out["input_only_as_output"]
    assert not wrong["ok"] and "no output channels" in wrong["error"]

    amb = out["ambiguous"]
    assert not amb["ok"] and "ambiguous" in amb["error"]
    assert "rig_mic_a" in amb["error"] and "rig_mic_b" in amb["error"]

    assert not out["bad_index"]["ok"] and "9999" in out["bad_index"]["error"]
    assert out["default_input"] and out["default_output"]


LOOPBACK = r"""
from gevent import monkey

monkey.patch_all()

import json
import sys
import time

import gevent
import numpy as np
import pyaudio

mode, dst = sys.argv[1], sys.argv[2]
if mode == "resampled":
    # Pretend the devices refuse 16 kHz, as many real ones do: both classes must then run at
    # the device's default rate and convert with soxr.
    _supported = pyaudio.PyAudio.is_format_supported

    def refuse_16k(self, rate, *args, **kwargs):
        if rate == 16000:
            raise ValueError("Invalid sample rate", pyaudio.paInvalidSampleRate)
        return _supported(self, rate, *args, **kwargs)

    pyaudio.PyAudio.is_format_supported = refuse_16k

from service.audio.devices import DeviceSink, DeviceSource, resolve
from service.audio.frames import FRAME_SAMPLES, SAMPLE_RATE

source = DeviceSource(resolve("rig_spk_a_out", "input"))
sink = DeviceSink(resolve("rig_spk_a", "output"))
source.start()
sink.start()

frames = []
bad = []


def reader():
    while True:
        frame = source.read(timeout=2.0)
        if frame is None:
            return
        if frame.pcm.dtype != np.int16 or frame.pcm.shape != (FRAME_SAMPLES,):
            bad.append(f"{frame.pcm.dtype} {frame.pcm.shape}")
        frames.append(frame)


reading = gevent.spawn(reader)
gevent.sleep(0.3)  # some silence first

t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
n = tone.size // FRAME_SAMPLES
first_write = time.time()
t0 = time.monotonic()
for i in range(n):
    sink.write(tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    gevent.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
gevent.sleep(0.4)
sink_stats = sink.stats
sink.close()
source_stats = source.stats
source.close()
reading.join(5)
after_close = source.read(timeout=0.1)

pcm = np.concatenate([f.pcm for f in frames])
np.save(dst, pcm)
times = [f.capture_time for f in frames]
print(json.dumps({
    "written": n,
    "first_write": first_write,
    "times": times,
    "bad": bad,
    "reader_done": reading.dead,
    "after_close": repr(after_close),
    "sink": sink_stats,
    "source": source_stats,
}))
"""


@pytest.mark.parametrize("mode", ["16k", "resampled"])
def test_loopback_sink_to_source_carries_a_tone(
    audio_rig: AudioRig, tmp_path: Path, mode: str
) -> None:
    """DeviceSink -> sink spk_a -> its monitor -> DeviceSource, under gevent, in real time."""
    dst = tmp_path / "captured.npy"
    out = audio_rig.run_python(LOOPBACK, mode, str(dst))
    pcm = np.load(dst)
    rate = 16000

    if mode == "resampled":
        assert out["sink"]["rate"] != rate and out["source"]["rate"] != rate, out
    else:
        assert out["sink"]["rate"] == rate and out["source"]["rate"] == rate, out
    assert out["bad"] == []
    assert out["reader_done"] and out["after_close"] == "None"

    # Frames are whole, contiguous and stamped 20 ms apart on the wall clock.
    times = np.array(out["times"])
    assert pcm.size == times.size * 320
    steps = np.diff(times)
    assert abs(float(np.median(steps)) - 0.02) < 0.001, steps
    assert np.all(np.abs(steps - 0.02) < 0.015), steps

    # The tone arrived, whole, at the right pitch.
    rms = np.sqrt(np.mean(pcm.reshape(-1, 320).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.25 * rms.max())
    assert rms.max() > 5000, rms.max()
    assert loud.size >= out["written"] - 5, (loud.size, out["written"])
    onset = loud[0]
    segment = pcm[(onset + 5) * 320 : (onset + 55) * 320]  # one second inside the tone
    assert abs(dominant_hz(segment, rate) - 440) < 10

    # The first loud frame is stamped shortly after the first write (prebuffer + device path).
    delay = times[onset] - out["first_write"]
    assert -0.05 < delay < 0.5, delay

    sink, source = out["sink"], out["source"]
    assert sink["dropped"] == 0 and source["dropped"] == 0
    assert sink["frames_played"] >= out["written"] - 2, sink
    assert sink["underruns"] >= 1  # ran dry when the tone ended
    assert source["frames_captured"] >= times.size
    jitter = float(np.abs(steps - 0.02).max())
    print(mode, "delay", round(delay, 3), "jitter", round(jitter, 4), sink, source)


@pytest.mark.parametrize(
    ("play_on", "record_from"), [("rig_spk_a", "rig_spk_a_out"), ("rig_mic_b_in", "rig_mic_b")]
)
def test_rig_helpers_play_and_record(audio_rig: AudioRig, play_on: str, record_from: str) -> None:
    """The fixture's own tools: what is played into a sink comes out of its monitor."""
    recording = audio_rig.start_record(record_from, 1.5, 16000)
    audio_rig.play(tone(1000, 0.8, 48000), play_on, 48000)
    pcm = recording.wait()
    assert pcm is not None and pcm.size == 24000
    rms = np.sqrt(np.mean(pcm.reshape(-1, 320).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > 0.25 * rms.max())
    assert rms.max() > 5000 and 30 <= loud.size <= 45, (rms.max(), loud.size)
    assert abs(dominant_hz(pcm[loud[2] * 320 : loud[-2] * 320], 16000) - 1000) < 10


def test_list_devices_without_a_rig(tmp_path: Path) -> None:
    """No sound server reachable: an empty list and a reason, not an exception."""
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    client_conf = tmp_path / "client.conf"
    client_conf.write_text("autospawn = no\n")  # never start a user's PulseAudio from a test
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PULSE_", "ALSA_", "IM_AUDIO_RIG")) and k != "XDG_RUNTIME_DIR"
    }
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        PULSE_CLIENTCONFIG=str(client_conf),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", LIST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [d["name"] for d in out["devices"]]
    assert not any(n.startswith("rig_") for n in names)
    if any(Path("/dev/snd").glob("pcmC*")):
        pytest.skip(f"this machine has a sound card; PortAudio lists {names}")
    assert out["devices"] == []
    assert out["reason"].startswith("PortAudio found no devices"), out["reason"]
