"""A live speaker: PortAudio's playback callback is the call's playout clock, pulling 20 ms
frames from the playout buffer.

Apart from capture because the two run on opposite clocks (see capture.py); the headless
sinks with a greenlet for a clock are in sinks.py. What capture and playback share (opening,
probing, health) is in streams.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import numpy as np
import pyaudio
import soxr

from service.audio.devices import DeviceError, DeviceInfo, shared_pa
from service.audio.playout import PlayoutBuffer
from service.audio.sinks import LOG_EVERY_S, PlayoutSink
from service.audio.streams import (
    HEALTH_CHECK_S,
    RESAMPLE_QUALITY,
    close_stream,
    open_stream,
    probe_device,
    stream_rate,
    stream_trouble,
)
from service.frames import FRAME_MS, SAMPLE_RATE

log = logging.getLogger(__name__)


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
        """Check now that the device opens (DeviceError if not); see ``probe_device``."""
        probe_device(self.device, "output")

    def start(self) -> None:
        """Open the device; playing starts at once (silence until frames arrive). Call from
        a greenlet."""
        if self._stream is not None or self._closed:
            raise RuntimeError("DeviceSink.start() may be called once")
        pa = shared_pa()
        self.rate = stream_rate(pa, self.device, "output")
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                SAMPLE_RATE, self.rate, 1, dtype="int16", quality=RESAMPLE_QUALITY
            )
        self._started_at = time.monotonic()
        self._stream = open_stream(
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
            trouble = stream_trouble(
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
            close_stream(self._stream)
            self._stream = None

    def _extra_stats(self) -> dict[str, Any]:
        return {
            "device": self.device.name,
            "rate": self.rate,
            "device_underflows": self.device_underflows,
        }
