"""Where a call's incoming audio goes: a sound device, a WAV file, or nowhere."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from service.audio.frames import SAMPLE_RATE


class Sink(Protocol):
    def start(self) -> None: ...

    def write(self, pcm: np.ndarray) -> None:
        """One 20 ms int16 frame; must not block the caller."""
        ...

    def close(self) -> None: ...

    @property
    def stats(self) -> dict: ...


class NullSink:
    def __init__(self) -> None:
        self._frames = 0

    def start(self) -> None:
        pass

    def write(self, pcm: np.ndarray) -> None:
        self._frames += 1

    def close(self) -> None:
        pass

    @property
    def stats(self) -> dict:
        return {"kind": "null", "frames_played": self._frames}


class WavFileSink:
    """Records what is heard, as a 16 kHz mono WAV, frame by frame so a crash keeps
    everything up to the last frame (the header is patched on close)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wav: wave.Wave_write | None = None
        self._frames = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - open for the whole call
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        self._wav = wav

    def write(self, pcm: np.ndarray) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(pcm.astype("<i2").tobytes())
            self._frames += 1

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    @property
    def stats(self) -> dict:
        return {"kind": "file", "frames_played": self._frames, "path": str(self.path)}
