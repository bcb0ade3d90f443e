"""service.audio.devices against real, clocked virtual devices (scripts/audio-rig).

Every device operation runs in a subprocess with the rig's environment (see tests/audio_rig.py
for why); the subprocess prints one JSON object, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from audio_rig import (
    RIG_ENV_KEYS,
    RIG_SCRIPT,
    ROOT,
    AudioRig,
    _rig_start,
    dominant_hz,
    tone,
)

# Each test runs its device work in a subprocess (see audio_rig.py).
pytestmark = pytest.mark.slow

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

from service.audio.capture import DeviceSource
from service.audio.codecs import make_encoder
from service.audio.devices import resolve
from service.frames import FRAME_SAMPLES, SAMPLE_RATE
from service.audio.playback import DeviceSink

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
codec = "opus" if mode == "opus" else "pcm16"
encoder = make_encoder(codec)
first_write = time.time()
t0 = time.monotonic()
for i in range(n):
    # As the call's receive loop does: the wire frame, still encoded, into the playout buffer.
    payload = encoder.encode(tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    sink.playout.push(i, round(time.time() * 1e6), codec, payload)
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


@pytest.mark.parametrize("mode", ["16k", "resampled", "opus"])
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

    # The first loud frame is stamped shortly after the first write (playout + device path).
    delay = times[onset] - out["first_write"]
    assert -0.05 < delay < 0.5, delay

    sink, source = out["sink"], out["source"]
    assert source["dropped"] == 0
    assert sink["frames_dropped_overflow"] == 0 and sink["frames_dropped_late"] == 0, sink
    assert sink["frames_played"] + sink["frames_dropped_catchup"] == out["written"], sink
    assert sink["underruns"] >= 1  # ran dry when the tone ended
    assert sink["failed"] is None
    # Pushed to handed-to-the-device, on one clock: about the playout target plus a tick.
    assert sink["latency_ms"]["n"] == sink["frames_played"]
    assert sink["latency_ms"]["p50"] < 120, sink["latency_ms"]
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


OPEN_SPECS = r"""
import json
from service.audio.specs import AudioSpecError, open_sink, open_source

def attempt(opener, spec):
    try:
        return {"ok": True, "type": type(opener(spec)).__name__}
    except AudioSpecError as exc:
        return {"ok": False, "error": str(exc)}

print(json.dumps({
    "gone_input": attempt(open_source, "rig_gone_in"),
    "gone_output": attempt(open_sink, "rig_gone_out"),
    "playback_only_as_input": attempt(open_source, "rig_spk_a"),
    "capture_only_as_output": attempt(open_sink, "rig_mic_a"),
    "missing": attempt(open_source, "no-such-microphone"),
    "good_input": attempt(open_source, "rig_mic_a"),
    "good_output": attempt(open_sink, "rig_spk_a"),
}))
"""


def test_unusable_devices_are_refused_when_the_session_is_made(
    audio_rig: AudioRig, tmp_path: Path
) -> None:
    """A device that is listed but cannot be opened now (its PulseAudio sink is gone, as for
    a busy or unplugged card) is an AudioSpecError (the API's 422), like a missing device or
    one that cannot do the direction asked for."""
    home = tmp_path / "home"
    shutil.copytree(audio_rig.env["HOME"], home)
    server = audio_rig.env["PULSE_SERVER"]
    with (home / ".asoundrc").open("a") as f:
        for name, side, device in (
            ("rig_gone_in", "capture", "no_such_sink.monitor"),
            ("rig_gone_out", "playback", "no_such_sink"),
        ):
            f.write(
                f'pcm.{name} {{\n\ttype asym\n\t{side}.pcm {{ type pulse server "{server}" '
                f'device "{device}" }}\n\thint {{ show on description "{name}" }}\n}}\n'
            )
    rig = AudioRig(audio_rig.dir, {**audio_rig.env, "HOME": str(home)})
    out = rig.run_python(OPEN_SPECS)
    for key in ("gone_input", "gone_output"):
        assert not out[key]["ok"] and "cannot open" in out[key]["error"], out[key]
    assert "no input channels" in out["playback_only_as_input"]["error"]
    assert "no output channels" in out["capture_only_as_output"]["error"]
    assert "no-such-microphone" in out["missing"]["error"]
    assert out["good_input"] == {"ok": True, "type": "DeviceSource"}
    assert out["good_output"] == {"ok": True, "type": "DeviceSink"}


DEATH = r"""
from gevent import monkey

monkey.patch_all()

import json
import subprocess
import sys
import time

import gevent

from service.audio.capture import DeviceSource
from service.audio.devices import resolve
from service.audio.playback import DeviceSink
from service.audio.sources import DeviceLost

rig_script, rig_dir = sys.argv[1], sys.argv[2]
source = DeviceSource(resolve("rig_mic_a", "input"))
sink = DeviceSink(resolve("rig_spk_a", "output"))
failures = []
sink.on_failed = lambda reason: failures.append((time.monotonic(), reason))
source.start()
sink.start()
frames = 0
t0 = time.monotonic()
while time.monotonic() - t0 < 0.6:
    if source.read(timeout=1.0) is not None:
        frames += 1
subprocess.run([rig_script, "stop", rig_dir], check=True, capture_output=True)
stopped = time.monotonic()
lost = None
try:
    while source.read() is not None:  # no timeout: it must end by itself
        frames += 1
except DeviceLost as exc:
    lost = (time.monotonic() - stopped, str(exc))
while not failures and time.monotonic() - stopped < 5:
    gevent.sleep(0.05)
t = time.monotonic()
source.close()
sink.close()
print(json.dumps({
    "frames": frames,
    "lost": lost,
    "sink_failed": [failures[0][0] - stopped, failures[0][1]] if failures else None,
    "sink_stats_failed": sink.stats["failed"],
    "source_stats_failed": source.stats["failed"],
    "close_s": time.monotonic() - t,
}))
"""


def test_a_device_that_dies_mid_call_is_reported_not_waited_on(
    audio_rig: AudioRig, tmp_path: Path
) -> None:
    """The sound server behind both devices goes away mid-stream (a private rig, stopped):
    the source's read() raises DeviceLost and the sink reports failure, each within about
    a second, and closing both returns at once."""
    directory = tmp_path / "rig"
    env = {k: v for k, v in _rig_start(directory).items() if k in RIG_ENV_KEYS}
    try:
        out = AudioRig(directory, env).run_python(DEATH, str(RIG_SCRIPT), str(directory))
    finally:
        subprocess.run([str(RIG_SCRIPT), "stop", str(directory)], timeout=60, check=False)
    print(out)
    assert out["frames"] >= 20  # it worked before
    assert out["lost"] is not None, out
    delay, reason = out["lost"]
    assert delay < 2.5 and reason.startswith("input device 'rig_mic_a' lost"), out
    assert out["sink_failed"] is not None, out
    delay, reason = out["sink_failed"]
    assert delay < 2.5 and reason.startswith("output device 'rig_spk_a' lost"), out
    assert out["sink_stats_failed"] == reason and out["source_stats_failed"] == out["lost"][1]
    assert out["close_s"] < 1.0
