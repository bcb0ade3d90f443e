"""Live sound devices through PyAudio/PortAudio: listing, choosing, capturing, playing.

The rest of the node speaks 20 ms / 16 kHz ``Frame``s and runs on gevent; PortAudio speaks
whatever rate a device likes and calls back on its own OS thread. This module is the seam:

- One ``pyaudio.PyAudio`` per process (``_pa()``): initialising PortAudio probes every ALSA
  device (slow, and ~40 lines of stderr noise), and its device list is fixed at that moment.
- Streams run in callback mode, so no greenlet ever blocks in a native read/write. The
  callbacks never block and never touch gevent, except ``ThreadToHub.put_nowait`` (capture)
  and a plain ``collections.deque`` (playback), both atomic under the GIL.
- A device that cannot do 16 kHz is opened at its default rate and resampled with soxr.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyaudio
import soxr

from service.audio.bridge import ThreadToHub
from service.audio.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Frame, Framer

__all__ = [
    "DeviceError",
    "DeviceInfo",
    "DeviceSink",
    "DeviceSource",
    "default_device",
    "list_devices",
    "resolve",
]

Kind = Literal["input", "output"]

# soxr's "LQ" recipe streams evenly (one output block per 20 ms input, ~15 ms delay) where
# "HQ" bunches output into every other callback (~30 ms of jitter), and its quality is ample
# for speech at 16 kHz.
RESAMPLE_QUALITY = "LQ"


class DeviceError(ValueError):
    """A device that was asked for cannot be used.

    The message is written for a person (it becomes an HTTP 422 body): what was asked, why it
    is unusable, and which devices exist instead.
    """


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def describe(self) -> str:
        return (
            f"{self.index}: {self.name!r} ({self.host_api}, {self.max_input_channels} in, "
            f"{self.max_output_channels} out, {self.default_sample_rate:g} Hz)"
        )


# --- the shared PortAudio instance ------------------------------------------------------------

_pa_lock = threading.Lock()
_pa_instance: pyaudio.PyAudio | None = None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the duration.

    ALSA and JACK print dozens of harmless lines while PortAudio probes devices, straight to
    fd 2 from C, so redirecting ``sys.stderr`` would not help. Errors still surface as
    exceptions from PyAudio.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no usable fd 2 (embedded interpreter): leave it alone
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _pa() -> pyaudio.PyAudio:
    """The process's one PyAudio instance, created on first use.

    Raises whatever PyAudio raises if PortAudio cannot initialise.
    """
    global _pa_instance
    with _pa_lock:
        if _pa_instance is None:
            with _quiet_stderr():
                _pa_instance = pyaudio.PyAudio()
        return _pa_instance


def _forget_pa_if_empty(pa: pyaudio.PyAudio) -> None:
    """Drop an instance that found no devices, so the next call probes again.

    PortAudio's device list is frozen at initialisation; if the sound server was not up yet,
    keeping that instance would hide devices for the life of the process. An instance with
    no devices cannot have open streams, so terminating it is safe.
    """
    global _pa_instance
    with _pa_lock:
        if _pa_instance is pa:
            _pa_instance = None
            with contextlib.suppress(Exception):
                pa.terminate()


def _no_devices_hint() -> str:
    if os.environ.get("PULSE_SERVER"):
        return (
            f"is the PulseAudio server at PULSE_SERVER={os.environ['PULSE_SERVER']} running, "
            "and was it up before this process first used audio?"
        )
    return "no sound card is visible and PULSE_SERVER is not set (see scripts/audio-rig)"


def list_devices() -> tuple[list[DeviceInfo], str | None]:
    """All devices PortAudio knows, plus a reason when there are none. Never raises.

    The reason matters more than the empty list: on a server the usual answer to "why can't
    I pick a microphone" is "there is no sound server", and the API should say so.
    """
    try:
        pa = _pa()
    except Exception as exc:
        return [], f"PyAudio failed to initialise: {exc}"
    devices: list[DeviceInfo] = []
    try:
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            try:
                host_api = str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"])
            except Exception:
                host_api = "unknown"
            devices.append(
                DeviceInfo(
                    index=int(info["index"]),
                    name=str(info["name"]),
                    host_api=host_api,
                    max_input_channels=int(info["maxInputChannels"]),
                    max_output_channels=int(info["maxOutputChannels"]),
                    default_sample_rate=float(info["defaultSampleRate"]),
                )
            )
    except Exception as exc:
        return [], f"PortAudio found no devices: listing failed: {exc}"
    if not devices:
        try:
            apis = ", ".join(
                str(pa.get_host_api_info_by_index(i)["name"])
                for i in range(pa.get_host_api_count())
            )
        except Exception:
            apis = "unknown"
        _forget_pa_if_empty(pa)
        return [], f"PortAudio found no devices (host APIs: {apis or 'none'}): {_no_devices_hint()}"
    return devices, None


def _listing(devices: list[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind) > 0]
    if not usable:
        return f"there are no {kind} devices"
    return f"{kind} devices: " + "; ".join(d.describe() for d in usable)


def resolve(spec: str | int, kind: Kind) -> DeviceInfo:
    """Find the device a user or config file means by ``spec``, fit for ``kind``.

    ``spec`` is an index (int or digit string) or a name: an exact name wins, else a unique
    case-insensitive substring. Substring matches are narrowed to devices that can do
    ``kind``, so "mic_a" finds the capture device even when a playback device shares the
    stem. Raises DeviceError with a message that lists what would work.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', not {kind!r}")
    devices, reason = list_devices()
    if not devices:
        raise DeviceError(f"{kind} device {spec!r} is not available: {reason}")

    def usable(d: DeviceInfo) -> DeviceInfo:
        if d.channels(kind) > 0:
            return d
        raise DeviceError(
            f"{kind} device {spec!r} resolved to {d.describe()}, which has no {kind} "
            f"channels; {_listing(devices, kind)}"
        )

    if isinstance(spec, bool):  # bool is an int; True is never a device
        raise DeviceError(f"{kind} device {spec!r} is not an index or a name")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        for d in devices:
            if d.index == index:
                return usable(d)
        raise DeviceError(f"no {kind} device with index {index}; {_listing(devices, kind)}")

    name = str(spec).strip()
    if not name:
        raise DeviceError(f"empty {kind} device name; {_listing(devices, kind)}")
    exact = [d for d in devices if d.name == name]
    if len(exact) == 1:
        return usable(exact[0])
    if len(exact) > 1:
        fit = [d for d in exact if d.channels(kind) > 0]
        if len(fit) == 1:
            return fit[0]
        candidates = "; ".join(d.describe() for d in (fit or exact))
        raise DeviceError(
            f"{kind} device name {name!r} is ambiguous: several devices have exactly this "
            f"name ({candidates}); use an index instead"
        )

    matches = [d for d in devices if name.lower() in d.name.lower()]
    if not matches:
        raise DeviceError(f"no {kind} device matches {name!r}; {_listing(devices, kind)}")
    fit = [d for d in matches if d.channels(kind) > 0]
    if len(fit) == 1:
        return fit[0]
    if len(fit) > 1:
        raise DeviceError(
            f"{kind} device name {name!r} is ambiguous: it matches "
            + "; ".join(d.describe() for d in fit)
            + "; use the full name or an index"
        )
    if len(matches) == 1:
        return usable(matches[0])
    raise DeviceError(
        f"{kind} device name {name!r} matches only devices with no {kind} channels ("
        + "; ".join(d.describe() for d in matches)
        + f"); {_listing(devices, kind)}"
    )


def default_device(kind: Kind) -> DeviceInfo:
    """PortAudio's default device for ``kind`` (the ``"default"`` spec in the API).

    On Linux this is usually ALSA's "default", which PulseAudio/PipeWire take over when they
    run. Raises DeviceError when there is none.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', not {kind!r}")
    devices, reason = list_devices()
    if not devices:
        raise DeviceError(f"no default {kind} device: {reason}")
    try:
        pa = _pa()
        info = (
            pa.get_default_input_device_info()
            if kind == "input"
            else pa.get_default_output_device_info()
        )
        index = int(info["index"])
    except Exception as exc:  # PyAudio raises OSError/IOError when there is no default
        raise DeviceError(f"no default {kind} device ({exc}); {_listing(devices, kind)}") from None
    for d in devices:
        if d.index == index and d.channels(kind) > 0:
            return d
    raise DeviceError(f"the default {kind} device is unusable; {_listing(devices, kind)}")


# --- opening streams ---------------------------------------------------------------------------


def _supports(pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind, rate: int) -> bool:
    kwargs: dict[str, Any] = (
        {"input_device": device.index, "input_channels": 1, "input_format": pyaudio.paInt16}
        if kind == "input"
        else {"output_device": device.index, "output_channels": 1, "output_format": pyaudio.paInt16}
    )
    try:
        return bool(pa.is_format_supported(rate, **kwargs))
    except (ValueError, OSError):
        return False


def _stream_rate(pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind) -> int:
    """16 kHz when the device (or its host API's converter) does it, else the native rate.

    Letting ALSA/PulseAudio convert is cheaper than converting ourselves; soxr is only for
    devices that refuse 16 kHz.
    """
    if _supports(pa, device, kind, SAMPLE_RATE):
        return SAMPLE_RATE
    return round(device.default_sample_rate)


def _open(device: DeviceInfo, kind: Kind, callback: Any, rate: int, frames_per_buffer: int) -> Any:
    pa = _pa()
    try:
        return pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=rate,
            input=kind == "input",
            output=kind == "output",
            input_device_index=device.index if kind == "input" else None,
            output_device_index=device.index if kind == "output" else None,
            frames_per_buffer=frames_per_buffer,
            stream_callback=callback,
            start=True,
        )
    except (OSError, ValueError) as exc:
        raise DeviceError(
            f"cannot open {kind} device {device.describe()} at {rate} Hz mono: {exc} "
            "(in use by another program, unplugged, or the sound server is down?)"
        ) from exc


def _close_stream(stream: Any) -> None:
    """Stop and close, tolerating a stream PortAudio already gave up on."""
    with contextlib.suppress(Exception):
        stream.stop_stream()
    with contextlib.suppress(Exception):
        stream.close()


class DeviceSource:
    """A live microphone delivering 20 ms / 16 kHz Frames to a greenlet.

    The callback (PortAudio's thread) resamples if needed, cuts frames, stamps them and hands
    them over through a ThreadToHub; ``read()`` waits cooperatively. If the reader falls
    behind by more than ``QUEUE_FRAMES`` the oldest frames are dropped: stale audio is worth
    less than fresh audio in a call.
    """

    QUEUE_FRAMES = 50  # 1 s
    CLOCK_GAIN = 0.05  # share of the wall-clock error corrected per callback (~0.4 s to settle)
    REANCHOR_S = 0.1

    def __init__(self, device: DeviceInfo) -> None:
        if device.max_input_channels < 1:
            raise DeviceError(f"input device {device.describe()} has no input channels")
        self.device = device
        self.rate = 0
        self._stream: Any = None
        self._queue: ThreadToHub[Frame] | None = None
        self._resampler: Any = None
        self._framer = Framer()
        self._pushed = 0  # 16 kHz samples given to the framer
        self._last_end = 0.0  # wall clock just after the previous chunk's last sample
        self._closing = False
        self._closed = False
        self.frames_captured = 0
        self.overflows = 0

    def start(self) -> None:
        """Open the device and start capturing. Call from the hub's thread (a greenlet)."""
        if self._stream is not None or self._closed:
            raise RuntimeError("DeviceSource.start() may be called once")
        pa = _pa()
        self.rate = _stream_rate(pa, self.device, "input")
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                self.rate, SAMPLE_RATE, 1, dtype="int16", quality=RESAMPLE_QUALITY
            )
        # The queue binds to the current hub, so it is made here, not in the callback.
        self._queue = ThreadToHub(self.QUEUE_FRAMES)
        try:
            self._stream = _open(
                self.device, "input", self._callback, self.rate, self.rate * FRAME_MS // 1000
            )
        except BaseException:
            self._queue.close()
            self._queue = None
            raise

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: dict, status: int
    ) -> tuple[None, int]:
        """PortAudio's thread. Never blocks; the only gevent call is put_nowait."""
        now = time.time()
        if self._closing or in_data is None:
            return None, pyaudio.paContinue
        if status & pyaudio.paInputOverflow:
            self.overflows += 1
        chunk = np.frombuffer(in_data, dtype=np.int16)
        # Wall-clock time just after the chunk's last sample: PortAudio's ADC timestamp when
        # it is plausible (some ALSA plugins report 0), else "now".
        duration = chunk.size / self.rate
        adc = time_info.get("input_buffer_adc_time", 0.0) if time_info else 0.0
        cur = time_info.get("current_time", 0.0) if time_info else 0.0
        lag = cur - adc
        raw_end = now - lag + duration if adc > 0 and 0 <= lag < 1.0 else now
        # The raw estimate is late by however long this thread waited for the GIL; the device
        # clock is steady. So follow the sample count and let the wall clock pull it in
        # slowly, re-anchoring only after a real gap (an overflow, a stalled device).
        expected = self._last_end + duration
        if self._last_end and abs(raw_end - expected) < self.REANCHOR_S:
            end = expected + self.CLOCK_GAIN * (raw_end - expected)
        else:
            end = raw_end
        self._last_end = end
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk)
            end -= self._resampler.delay() / SAMPLE_RATE
        pending = self._pushed - self.frames_captured * FRAME_SAMPLES
        self._pushed += chunk.size
        # The framer's data = `pending` old samples + this chunk, ending at `end`.
        first = end - (pending + chunk.size) / SAMPLE_RATE
        queue = self._queue
        for i, pcm in enumerate(self._framer.push(chunk)):
            self.frames_captured += 1
            if queue is not None:
                queue.put_nowait(Frame(pcm.copy(), first + i * FRAME_SAMPLES / SAMPLE_RATE))
        return None, pyaudio.paContinue

    def read(self, timeout: float | None = None) -> Frame | None:
        """Next frame, waiting cooperatively; None on timeout or once closed."""
        if self._queue is None:
            if self._closed:
                return None
            raise RuntimeError("DeviceSource.read() before start()")
        return self._queue.get(timeout)

    def close(self) -> None:
        """Stop the device and wake any reader (it gets None). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._stream is not None:
            _close_stream(self._stream)  # waits for a running callback to return
            self._stream = None
        if self._queue is not None:
            self._queue.close()

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "kind": "device",
            "device": self.device.name,
            "frames_captured": self.frames_captured,
            "dropped": self._queue.dropped if self._queue is not None else 0,
            "overflows": self.overflows,
            "rate": self.rate,
        }


class DeviceSink:
    """A live speaker fed 20 ms / 16 kHz frames by a greenlet.

    ``write()`` resamples (on the greenlet, keeping the callback cheap) and appends to a
    bounded deque; the callback drains it. Playback starts once ``PREBUFFER_FRAMES`` are
    queued, and again after every underrun, so a feed that is a few ms late does not click
    on every frame. (A proper jitter buffer will sit in front of this.)
    """

    MAX_FRAMES = 10  # 200 ms: beyond that, latency hurts more than dropping
    PREBUFFER_FRAMES = 2

    def __init__(self, device: DeviceInfo) -> None:
        if device.max_output_channels < 1:
            raise DeviceError(f"output device {device.describe()} has no output channels")
        self.device = device
        self.rate = 0
        self._stream: Any = None
        self._resampler: Any = None
        self._buffer: collections.deque[np.ndarray] = collections.deque()
        # Callback-thread state: the unplayed tail of a partly played item.
        self._carry = np.zeros(0, dtype=np.int16)
        self._playing = False
        self._closed = False
        self.frames_played = 0
        self.underruns = 0
        self.dropped = 0

    def start(self) -> None:
        if self._stream is not None or self._closed:
            raise RuntimeError("DeviceSink.start() may be called once")
        pa = _pa()
        self.rate = _stream_rate(pa, self.device, "output")
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                SAMPLE_RATE, self.rate, 1, dtype="int16", quality=RESAMPLE_QUALITY
            )
        self._stream = _open(
            self.device, "output", self._callback, self.rate, self.rate * FRAME_MS // 1000
        )

    def write(self, pcm: np.ndarray) -> None:
        """Queue one 16 kHz int16 frame. Never blocks; drops the oldest frame when full."""
        if self._closed:
            return
        if self._stream is None:
            raise RuntimeError("DeviceSink.write() before start()")
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected 1-D int16 PCM, got {pcm.dtype} {pcm.shape}")
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
            if pcm.size == 0:
                return  # the resampler is still filling its delay line
        else:
            pcm = pcm.copy()  # the caller may reuse its array
        if len(self._buffer) >= self.MAX_FRAMES:
            try:
                self._buffer.popleft()
                self.dropped += 1
            except IndexError:  # the callback just drained it
                pass
        self._buffer.append(pcm)

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: dict, status: int
    ) -> tuple[bytes, int]:
        """PortAudio's thread: fill exactly frame_count samples, padding with silence."""
        if self._closed:
            return bytes(frame_count * 2), pyaudio.paContinue
        if not self._playing:
            if len(self._buffer) < self.PREBUFFER_FRAMES:
                return bytes(frame_count * 2), pyaudio.paContinue
            self._playing = True
        parts = [self._carry] if self._carry.size else []
        have = self._carry.size
        while have < frame_count:
            try:
                item = self._buffer.popleft()
            except IndexError:
                break
            parts.append(item)
            have += item.size
            self.frames_played += 1
        data = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        if data.size < frame_count:
            # Ran dry: play silence for the rest and wait for a new prebuffer.
            self.underruns += 1
            self._playing = False
            self._carry = np.zeros(0, dtype=np.int16)
            out = np.zeros(frame_count, dtype=np.int16)
            out[: data.size] = data
            return out.tobytes(), pyaudio.paContinue
        self._carry = data[frame_count:]
        return data[:frame_count].tobytes(), pyaudio.paContinue

    def close(self) -> None:
        """Stop the device, discarding anything not yet played. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._stream is not None:
            _close_stream(self._stream)
            self._stream = None

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "kind": "device",
            "device": self.device.name,
            "frames_played": self.frames_played,
            "underruns": self.underruns,
            "dropped": self.dropped,
            "rate": self.rate,
        }
