"""Where a call's incoming audio goes: a sound device, a WAV file, or nowhere.

Every sink plays from a ``PlayoutBuffer`` (``sink.playout``): the receive loop pushes what
arrives, still encoded, and the sink's own clock pulls one 20 ms frame per tick. A sound
device's clock is its PortAudio callback (playback.DeviceSink); the headless sinks here run a
greenlet paced to the wall clock, so that a node without a speaker buffers, conceals and
catches up exactly like one with a speaker (and the latency benchmark measures the same path).

A greenlet rather than a thread for the headless clock: pulling is cheap (an Opus decode is
~20 µs), a WAV write of 640 bytes does not block the hub in practice, and the session's
other work is on the hub already. Its pacing is as good as the hub's; a hub stall longer than
``REANCHOR_S`` re-anchors the clock (counted) instead of pulling a burst.

A sink that fails mid-call (a device that died, a disk that filled) sets ``failed`` to a
reason and calls ``on_failed(reason)`` once, on the hub, so the session can end the call.
"""

from __future__ import annotations

import contextlib
import logging
import time
import wave
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

import gevent
import numpy as np

from service.audio.playout import PlayoutBuffer
from service.frames import FRAME_MS, SAMPLE_RATE

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0  # how often playout drop/conceal counters that moved are logged


class Sink(Protocol):
    playout: PlayoutBuffer
    on_failed: Callable[[str], None] | None

    def start(self) -> None: ...

    def close(self) -> None: ...

    @property
    def failed(self) -> str | None: ...

    @property
    def device_underflows(self) -> int:
        """Times the sound device ran dry below the playout buffer (0 without a device)."""
        ...

    @property
    def stats(self) -> dict: ...


class PlayoutSink:
    """What every sink shares: its playout buffer, the failure report."""

    kind = "sink"

    def __init__(self, playout: PlayoutBuffer | None = None) -> None:
        self.playout = playout if playout is not None else PlayoutBuffer()
        self.on_failed: Callable[[str], None] | None = None
        self._failed: str | None = None
        self._reported = False
        self.device_underflows = 0  # a device sink counts them; headless ones have none

    @property
    def failed(self) -> str | None:
        return self._failed

    def _fail(self, reason: str) -> None:
        """Record a failure and tell the owner once. Call on the hub."""
        if self._failed is None:
            self._failed = reason
            log.warning("%s sink failed: %s", self.kind, reason)
        if not self._reported and self.on_failed is not None:
            self._reported = True
            self.on_failed(reason)

    def _extra_stats(self) -> dict[str, Any]:
        return {}

    @property
    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._extra_stats(), "failed": self._failed,
                **self.playout.stats}  # fmt: skip


class PacedSink(PlayoutSink):
    """A sink whose playout clock is a greenlet ticking every 20 ms of wall-clock time."""

    REANCHOR_S = 0.2

    def __init__(self, playout: PlayoutBuffer | None = None) -> None:
        super().__init__(playout)
        self._clock: gevent.Greenlet | None = None
        self._closed = False
        self.clock_slips = 0

    def start(self) -> None:
        if self._clock is not None or self._closed:
            raise RuntimeError(f"{type(self).__name__}.start() may be called once")
        self._open()
        self._clock = gevent.spawn(self._run)

    def _open(self) -> None:
        pass

    def _play(self, pcm: np.ndarray) -> None:
        pass

    def _run(self) -> None:
        period = FRAME_MS / 1000
        t0 = time.monotonic()
        next_log = t0 + LOG_EVERY_S
        n = 0
        while not self._closed:
            now = time.monotonic()
            delay = t0 + n * period - now
            if delay > 0:
                gevent.sleep(delay)
                if self._closed:
                    return
            elif delay < -self.REANCHOR_S:
                t0 = now - n * period  # the hub stalled: carry on from now, no burst
                self.clock_slips += 1
            try:
                self._play(self.playout.pull())
            except Exception as exc:
                self._fail(f"{self.kind} output failed: {exc}")
                return
            n += 1
            if now >= next_log:
                next_log = now + LOG_EVERY_S
                self.playout.log_changes(log, f"{self.kind} playout")

    def close(self) -> None:
        """Stop the clock (whatever is still buffered is not played). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._clock is not None and self._clock is not gevent.getcurrent():
            self._clock.kill(block=True, timeout=1.0)
        self._shut()

    def _shut(self) -> None:
        pass

    def _extra_stats(self) -> dict[str, Any]:
        return {"clock_slips": self.clock_slips}


class NullSink(PacedSink):
    """Plays into nothing, on time: the call still buffers, conceals and measures latency."""

    kind = "null"


class WavFileSink(PacedSink):
    """Records what is heard, as a 16 kHz mono WAV, tick by tick (silence and concealment
    included, so the file is the call's timeline); a crash keeps everything up to the last
    tick (the header is patched on close).

    It is given the file already open (created in the media folder when the session was
    made, see specs.open_sink) and writes only through that descriptor, never the name
    again: whatever is put at the name later is not touched. A call that never connects
    leaves a valid, empty WAV."""

    kind = "file"

    def __init__(self, file: BinaryIO, shown: str, playout: PlayoutBuffer | None = None) -> None:
        super().__init__(playout)
        self.path = shown  # as the caller named it, relative to the media folder
        self._file: BinaryIO | None = file
        wav = wave.open(file, "wb")  # noqa: SIM115 - open for the whole call
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        self._wav: wave.Wave_write | None = wav

    def _play(self, pcm: np.ndarray) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(pcm.astype("<i2").tobytes())

    def _shut(self) -> None:
        if self._wav is not None:
            with contextlib.suppress(OSError):
                self._wav.close()  # patches the header; leaves the file to us
            self._wav = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _extra_stats(self) -> dict[str, Any]:
        return {"path": self.path, "clock_slips": self.clock_slips}
