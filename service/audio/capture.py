"""A live microphone: PortAudio's capture callback turned into 20 ms / 16 kHz ``Frame``s on the
hub, each stamped with its capture time.

Apart from playback because the two run on opposite clocks: here the device pushes and a
greenlet reads through a bounded ``ThreadToHub``; there the device pulls from the playout
buffer. What both share (opening, probing, health) is in streams.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyaudio
import soxr

from service.audio.devices import DeviceError, DeviceInfo, shared_pa
from service.audio.sources import DeviceLost
from service.audio.streams import (
    HEALTH_CHECK_S,
    RESAMPLE_QUALITY,
    close_stream,
    open_stream,
    probe_device,
    stream_rate,
    stream_trouble,
)
from service.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Frame, Framer
from service.threadhub import ThreadToHub

log = logging.getLogger(__name__)


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
        """Check now that the device opens (DeviceError if not); see ``probe_device``."""
        probe_device(self.device, "input")

    def start(self) -> None:
        """Open the device and start capturing. Call from the hub's thread (a greenlet)."""
        if self._stream is not None or self._closed:
            raise RuntimeError("DeviceSource.start() may be called once")
        pa = shared_pa()
        self.rate = stream_rate(pa, self.device, "input")
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                self.rate, SAMPLE_RATE, 1, dtype="int16", quality=RESAMPLE_QUALITY
            )
        # The queue binds to the current hub, so it is made here, not in the callback.
        self._queue = ThreadToHub(self.QUEUE_FRAMES)
        self._started_at = time.monotonic()
        try:
            self._stream = open_stream(
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
            trouble = stream_trouble(
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
            close_stream(self._stream)  # waits for a running callback to return
            self._stream = None
        if self._queue is not None:
            self._queue.close()

    @property
    def overruns(self) -> int:
        return self.overflows + (self._queue.dropped if self._queue is not None else 0)

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
