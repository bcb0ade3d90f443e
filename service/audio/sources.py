"""Where a call's outgoing audio comes from: a sound device, or a headless stand-in.

Headless sources (`file:PATH`, `tone:HZ`, `silence`) are paced to real time by a greenlet
clock, so a node on a server with no microphone behaves on the wire exactly like one with
a microphone — which is what makes the demo and the end-to-end tests honest.
"""

from __future__ import annotations

import time
from typing import Protocol

import gevent
import numpy as np

from service.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Frame, silence, to_int16


class DeviceLost(RuntimeError):
    """A live device stopped working mid-call: unplugged, or its sound server went away.

    The message is the reason, written for the call's ``end_reason`` (e.g. ``input device
    'rig_mic_a' lost: its audio stream stopped``). Headless sources never raise it.
    """


class Source(Protocol):
    def start(self) -> None: ...

    def read(self, timeout: float | None = None) -> Frame | None:
        """Next 20 ms frame (cooperative wait); None when closed or on timeout.

        Raises DeviceLost when a live device has died; the source is then useless."""
        ...

    def close(self) -> None: ...

    @property
    def overruns(self) -> int:
        """Captured frames lost before the call read them (a device's overflows)."""
        ...

    @property
    def stats(self) -> dict: ...


class PacedSource:
    """Produces frames on a real-time schedule; subclasses say what is in each frame."""

    description = "paced"

    def __init__(self) -> None:
        self._t0 = 0.0
        self._n = 0
        self._closed = False
        self.ended_at: float | None = None  # wall clock when a finite source ran out

    def start(self) -> None:
        self._t0 = time.time()

    def read(self, timeout: float | None = None) -> Frame | None:
        if self._closed:
            return None
        due = self._t0 + self._n * FRAME_MS / 1000
        delay = due - time.time()
        if timeout is not None and delay > timeout:
            gevent.sleep(timeout)
            return None
        if delay > 0:
            gevent.sleep(delay)
        if self._closed:
            return None
        pcm = self._next_pcm(self._n)
        self._n += 1
        return Frame(pcm=pcm, capture_time=due)

    def _next_pcm(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    @property
    def overruns(self) -> int:
        return 0  # a paced source makes its frames when they are read

    @property
    def stats(self) -> dict:
        return {
            "kind": self.description,
            "frames_captured": self._n,
            "ended": self.ended_at is not None,
            "ended_at": self.ended_at,
        }


class SilenceSource(PacedSource):
    description = "silence"

    def _next_pcm(self, n: int) -> np.ndarray:
        return silence()


class ToneSource(PacedSource):
    description = "tone"

    def __init__(self, hz: float, level: float = 0.3) -> None:
        super().__init__()
        self.hz = hz
        self.level = level

    def _next_pcm(self, n: int) -> np.ndarray:
        t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / SAMPLE_RATE
        return to_int16(self.level * np.sin(2 * np.pi * self.hz * t))


class FileSource(PacedSource):
    """Plays a WAV as the microphone, then goes quiet: the call stays up, as it would
    after a person stops talking."""

    description = "file"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        pad = (-samples.size) % FRAME_SAMPLES
        self._samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
        self._frames = self._samples.size // FRAME_SAMPLES

    def _next_pcm(self, n: int) -> np.ndarray:
        if n < self._frames:
            return self._samples[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES]
        if self.ended_at is None:
            self.ended_at = self._t0 + self._frames * FRAME_MS / 1000
        return silence()
