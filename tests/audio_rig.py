"""Real, clocked virtual sound devices (see scripts/audio-rig), behind the ``audio_rig``
fixture (conftest.py).

Device work happens in SUBPROCESSES started with the rig's environment, never in the pytest
process: PortAudio reads ALSA's configuration ($HOME/.asoundrc) and freezes its device list
when it initialises, and the pytest process may have initialised it long before the rig's
daemon started, with the wrong HOME.

This file is also the subprocess tool behind ``play``/``record``; it uses plain blocking
PyAudio, independent of service.audio.devices, so that tests of that module do not measure
it with itself::

    python tests/audio_rig.py play DEVICE RATE IN.npy
    python tests/audio_rig.py record DEVICE SECONDS RATE OUT.npy

Environment: ``IM_AUDIO_RIG=DIR`` reuses a rig that is already running (CI starts one with
``eval "$(scripts/audio-rig start DIR)"``); ``IM_REQUIRE_AUDIO_RIG=1`` turns "pulseaudio is
not installed" from a skip into a failure, so CI can never skip these tests silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RIG_SCRIPT = ROOT / "scripts" / "audio-rig"
READY = "AUDIO_TOOL_READY"
RIG_ENV_KEYS = ("PULSE_SERVER", "HOME", "XDG_RUNTIME_DIR")


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation)."""
    x = np.asarray(pcm, dtype=np.float64)
    if x.ndim != 1 or x.size < 16:
        raise ValueError(f"need a 1-D signal of at least 16 samples, got shape {x.shape}")
    x = (x - x.mean()) * np.hanning(x.size)
    mag = np.abs(np.fft.rfft(x))
    mag[0] = 0.0
    k = int(np.argmax(mag))
    shift = 0.0
    if 0 < k < mag.size - 1:
        a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        if denom != 0:
            shift = 0.5 * (a - c) / denom
    return (k + shift) * rate / x.size


def tone(hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class AudioToolError(RuntimeError):
    pass


@dataclass
class _Job:
    """A tool subprocess; its stderr goes to a file so that nothing can fill a pipe."""

    proc: subprocess.Popen[bytes]
    log: Path
    out: Path | None
    what: str

    def wait_ready(self, timeout: float = 15.0) -> None:
        from helpers import wait_until  # not at the top: this file is also the tool itself

        def ready() -> bool:
            return READY in self.log.read_text(errors="replace")

        with contextlib.suppress(AssertionError):  # not ready: said below, with the log
            wait_until(lambda: ready() or self.proc.poll() is not None, timeout, step=0.01)
        if ready():
            return
        self.proc.kill()
        self.proc.wait()
        raise AudioToolError(f"{self.what}: not ready after {timeout} s:\n{self._tail()}")

    def wait(self, timeout: float = 60.0) -> np.ndarray | None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AudioToolError(f"{self.what}: timed out:\n{self._tail()}") from None
        if rc != 0:
            raise AudioToolError(f"{self.what}: exit status {rc}:\n{self._tail()}")
        return np.load(self.out) if self.out is not None else None

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@dataclass
class AudioRig:
    dir: Path
    env: dict[str, str]  # what a subprocess needs: PULSE_SERVER, HOME, XDG_RUNTIME_DIR
    _tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="audio-rig-jobs-")))
    _n: int = 0

    def subprocess_env(self) -> dict[str, str]:
        """os.environ plus the rig's variables, with the repository importable."""
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return env

    def run_python(self, code: str, *args: str, timeout: float = 60.0) -> dict:
        """Run ``code`` in a fresh interpreter with the rig's environment.

        The code must print one JSON object as the last line of stdout; that object is
        returned. A non-zero exit raises with the subprocess's output.
        """
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=self.subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            raise AudioToolError(
                f"subprocess exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                f"\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def _spawn(self, what: str, args: list[str], out: Path | None) -> _Job:
        self._n += 1
        log = self._tmp / f"job{self._n}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *args],
                cwd=ROOT,
                env=self.subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        return _Job(proc, log, out, what)

    def start_play(self, pcm: np.ndarray, device_name: str, rate: int) -> _Job:
        """Start playing ``pcm`` (int16 mono) on ``device_name``; returns once it plays."""
        self._n += 1
        src = self._tmp / f"play{self._n}.npy"
        np.save(src, np.asarray(pcm, dtype=np.int16))
        job = self._spawn(
            f"play on {device_name}", ["play", device_name, str(rate), str(src)], None
        )
        job.wait_ready()
        return job

    def play(self, pcm: np.ndarray, device_name: str, rate: int) -> None:
        """Play ``pcm`` (int16 mono at ``rate``) on ``device_name`` and wait until it is out."""
        self.start_play(pcm, device_name, rate).wait(timeout=pcm.size / rate + 30)

    def start_record(self, device_name: str, seconds: float, rate: int) -> _Job:
        """Start recording; returns once the device delivers data. ``.wait()`` gives the PCM."""
        self._n += 1
        out = self._tmp / f"rec{self._n}.npy"
        job = self._spawn(
            f"record from {device_name}",
            ["record", device_name, str(seconds), str(rate), str(out)],
            out,
        )
        job.wait_ready()
        return job

    def record(self, device_name: str, seconds: float, rate: int) -> np.ndarray:
        """Record ``seconds`` of int16 mono at ``rate`` from ``device_name``."""
        pcm = self.start_record(device_name, seconds, rate).wait(timeout=seconds + 30)
        assert pcm is not None
        return pcm

    def cleanup(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    dominant_hz = staticmethod(dominant_hz)
    tone = staticmethod(tone)


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def _rig_start(directory: Path) -> dict[str, str]:
    proc = subprocess.run(
        [str(RIG_SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/audio-rig start {directory} failed ({proc.returncode}):\n{proc.stderr}",
            pytrace=False,
        )
    env = _parse_exports(proc.stdout)
    missing = [k for k in RIG_ENV_KEYS if k not in env]
    if missing:
        pytest.fail(f"scripts/audio-rig printed no {missing}:\n{proc.stdout}", pytrace=False)
    return env


# --- the subprocess tool -----------------------------------------------------------------------


def _tool_device(pa: object, name: str, kind: str) -> int:
    import pyaudio

    assert isinstance(pa, pyaudio.PyAudio)
    key = "maxInputChannels" if kind == "input" else "maxOutputChannels"
    names = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        names.append(str(info["name"]))
        if info["name"] == name and int(info[key]) > 0:
            return i
    raise SystemExit(f"audio_rig tool: no {kind} device named {name!r}; devices: {names}")


def _tool_main(argv: list[str]) -> None:
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        if argv[0] == "play":
            name, rate, src = argv[1], int(argv[2]), argv[3]
            pcm = np.load(src).astype(np.int16)
            block = rate // 50
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=rate,
                output=True,
                output_device_index=_tool_device(pa, name, "output"),
                frames_per_buffer=block,
            )
            print(READY, file=sys.stderr, flush=True)
            stream.write(pcm.tobytes())
            stream.write(bytes(2 * block * 5))  # push the tail through the device's buffer
            stream.stop_stream()
            stream.close()
        elif argv[0] == "record":
            name, seconds, rate, dst = argv[1], float(argv[2]), int(argv[3]), argv[4]
            block = rate // 50
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=rate,
                input=True,
                input_device_index=_tool_device(pa, name, "input"),
                frames_per_buffer=block,
            )
            # Ready only once data flows, so a caller can start playing right after.
            first = stream.read(block, exception_on_overflow=False)
            print(READY, file=sys.stderr, flush=True)
            want = round(seconds * rate)
            chunks = [first]
            got = block
            while got < want:
                n = min(block, want - got)
                chunks.append(stream.read(n, exception_on_overflow=False))
                got += n
            stream.stop_stream()
            stream.close()
            pcm = np.frombuffer(b"".join(chunks), dtype=np.int16)[:want]
            np.save(dst, pcm)
        else:
            raise SystemExit(f"audio_rig tool: unknown command {argv[0]!r}")
    finally:
        pa.terminate()


if __name__ == "__main__":
    _tool_main(sys.argv[1:])
