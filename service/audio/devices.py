"""Live sound devices through PyAudio/PortAudio: listing, choosing, capturing, playing.

The rest of the node speaks 20 ms / 16 kHz ``Frame``s and runs on gevent; PortAudio speaks
whatever rate a device likes and calls back on its own OS thread. This module is the seam:

- One ``pyaudio.PyAudio`` per process (``_pa()``): initialising PortAudio probes every ALSA
  device (slow, and ~40 lines of stderr noise), and its device list is fixed at that moment.
- Streams run in callback mode, so no greenlet ever blocks in a native read/write. The
  callbacks never block and never touch gevent, except ``ThreadToHub.put_nowait`` (capture)
  and ``PlayoutBuffer.pull`` (playback, a native lock held for bookkeeping only).
- A device that cannot do 16 kHz is opened at its default rate and resampled with soxr.
- A device that dies mid-call is noticed, never waited on: PortAudio marks the stream
  inactive when its host API fails (measured on the PulseAudio rig: killing the sound server
  stops the stream at once, and closing it afterwards returns in < 1 ms), and a stream that
  stays active but stops calling back for ``LOST_AFTER_S`` counts as lost too. A source then
  raises ``DeviceLost`` from ``read()``; a sink sets ``failed`` and calls ``on_failed``.
  Note: PulseAudio *hides* an unplugged device (its streams move to the default device),
  so through PulseAudio an unplug is heard on another device rather than reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import gevent
import numpy as np
import pyaudio
import soxr

from service.audio.bridge import ThreadToHub
from service.audio.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Frame, Framer
from service.audio.playout import PlayoutBuffer
from service.audio.sinks import LOG_EVERY_S, PlayoutSink
from service.audio.sources import DeviceLost

log = logging.getLogger(__name__)

__all__ = [
    "DeviceError",
    "DeviceInfo",
    "DeviceLost",
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

# A running stream that has not called back for this long is dead. The first callback gets
# longer: an idle PulseAudio null-sink monitor delivers its first capture 1-2 s late.
LOST_AFTER_S = 1.0
FIRST_CALLBACK_S = 3.0
HEALTH_CHECK_S = 0.25


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


def _open(
    device: DeviceInfo,
    kind: Kind,
    callback: Any,
    rate: int,
    frames_per_buffer: int,
    start: bool = True,
) -> Any:
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
            start=start,
        )
    except (OSError, ValueError) as exc:
        raise DeviceError(
            f"cannot open {kind} device {device.describe()} at {rate} Hz mono: {exc} "
            "(in use by another program, unplugged, or the sound server is down?)"
        ) from exc


def _probe(device: DeviceInfo, kind: Kind) -> None:
    """Open the device once and close it again, so that one that cannot be opened now (busy,
    gone, refused) is a DeviceError when the session is created, not when the call connects.
    Costs one open/close (a few ms through PulseAudio)."""
    pa = _pa()
    rate = _stream_rate(pa, device, kind)
    stream = _open(device, kind, None, rate, rate * FRAME_MS // 1000, start=False)
    _close_stream(stream)


def _stream_trouble(
    stream: Any, kind: Kind, device: DeviceInfo, started: float, last_callback: float | None
) -> str | None:
    """Why a running stream is dead, or None while it is fine. Cheap; call from the hub."""
    what = f"{kind} device {device.name!r} lost"
    try:
        active = bool(stream.is_active())
    except Exception as exc:  # PyAudio raises once PortAudio has dropped the stream
        return f"{what}: {exc}"
    if not active:
        return f"{what}: its audio stream stopped (unplugged, or the sound server went away)"
    now = time.monotonic()
    if last_callback is None:
        if now - started > FIRST_CALLBACK_S:
            return f"{what}: no audio from it {now - started:.1f} s after opening"
    elif now - last_callback > LOST_AFTER_S:
        return f"{what}: no audio from it for {now - last_callback:.1f} s"
    return None


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
        self._started_at = 0.0
        self._last_callback: float | None = None  # time.monotonic(), set by the callback
        self.failed: str | None = None
        self.frames_captured = 0
        self.overflows = 0

    def probe(self) -> None:
        """Check now that the device opens (DeviceError if not); see ``_probe``."""
        _probe(self.device, "input")

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
        self._started_at = time.monotonic()
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
        self._last_callback = time.monotonic()
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
        """Next frame, waiting cooperatively; None on timeout or once closed.

        Raises DeviceLost once the device has died (frames captured before that come
        first). The stream's health is checked every ``HEALTH_CHECK_S`` while waiting, so a
        dead device is reported within about ``LOST_AFTER_S`` even with ``timeout=None``.
        """
        if self._queue is None:
            if self._closed:
                return None
            raise RuntimeError("DeviceSource.read() before start()")
        if self.failed is not None:
            raise DeviceLost(self.failed)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = HEALTH_CHECK_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            frame = self._queue.get(wait)
            if frame is not None or self._closed:
                return frame
            trouble = _stream_trouble(
                self._stream, "input", self.device, self._started_at, self._last_callback
            )
            if trouble is not None:
                self.failed = trouble
                log.warning("%s", trouble)
                raise DeviceLost(trouble)
            if deadline is not None and time.monotonic() >= deadline:
                return None

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
            "failed": self.failed,
        }


class DeviceSink(PlayoutSink):
    """A live speaker whose PortAudio callback is the call's playout clock.

    Each callback pulls as many 20 ms frames from ``playout`` as it needs (resampled with
    soxr on that thread when the device refuses 16 kHz) and keeps the remainder for the next
    callback. A monitor greenlet watches the stream and reports a dead device through
    ``failed`` / ``on_failed``, and logs playout drops that moved.
    """

    kind = "device"

    def __init__(self, device: DeviceInfo, playout: PlayoutBuffer | None = None) -> None:
        if device.max_output_channels < 1:
            raise DeviceError(f"output device {device.describe()} has no output channels")
        super().__init__(playout)
        self.device = device
        self.rate = 0
        self._stream: Any = None
        self._resampler: Any = None
        self._monitor: gevent.Greenlet | None = None
        # Callback-thread state: what was resampled but not yet handed to the device.
        self._carry = np.zeros(0, dtype=np.int16)
        self._closed = False
        self._started_at = 0.0
        self._last_callback: float | None = None
        self.device_underflows = 0

    def probe(self) -> None:
        """Check now that the device opens (DeviceError if not); see ``_probe``."""
        _probe(self.device, "output")

    def start(self) -> None:
        """Open the device; playing starts at once (silence until frames arrive). Call from
        a greenlet."""
        if self._stream is not None or self._closed:
            raise RuntimeError("DeviceSink.start() may be called once")
        pa = _pa()
        self.rate = _stream_rate(pa, self.device, "output")
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                SAMPLE_RATE, self.rate, 1, dtype="int16", quality=RESAMPLE_QUALITY
            )
        self._started_at = time.monotonic()
        self._stream = _open(
            self.device, "output", self._callback, self.rate, self.rate * FRAME_MS // 1000
        )
        self._monitor = gevent.spawn(self._watch)

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: dict, status: int
    ) -> tuple[bytes, int]:
        """PortAudio's thread: fill exactly frame_count samples from the playout buffer."""
        self._last_callback = time.monotonic()
        if status & pyaudio.paOutputUnderflow:
            self.device_underflows += 1
        if self._closed:
            return bytes(frame_count * 2), pyaudio.paContinue
        parts = [self._carry] if self._carry.size else []
        have = self._carry.size
        while have < frame_count:
            pcm = self.playout.pull()
            if self._resampler is not None:
                pcm = self._resampler.resample_chunk(pcm)
            parts.append(pcm)
            have += pcm.size
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._carry = data[frame_count:]
        return data[:frame_count].astype("<i2", copy=False).tobytes(), pyaudio.paContinue

    def _watch(self) -> None:
        next_log = time.monotonic() + LOG_EVERY_S
        while not self._closed:
            gevent.sleep(HEALTH_CHECK_S)
            if self._closed or self._stream is None:
                return
            trouble = _stream_trouble(
                self._stream, "output", self.device, self._started_at, self._last_callback
            )
            if trouble is not None:
                self._fail(trouble)
                return
            if time.monotonic() >= next_log:
                next_log += LOG_EVERY_S
                self.playout.log_changes(log, f"{self.device.name} playout")

    def close(self) -> None:
        """Stop the device, discarding anything not yet played. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None and self._monitor is not gevent.getcurrent():
            self._monitor.kill(block=False)
        if self._stream is not None:
            _close_stream(self._stream)
            self._stream = None

    def _extra_stats(self) -> dict[str, Any]:
        return {
            "device": self.device.name,
            "rate": self.rate,
            "device_underflows": self.device_underflows,
        }
