"""The unit of call audio: 20 ms of 16 kHz mono PCM16, stamped with its capture time.

Everything between a microphone and the wire speaks in these frames, so that sources,
the segmenter, the codec and the link agree on one size without negotiating it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320


@dataclass(slots=True)
class Frame:
    pcm: np.ndarray  # int16, shape (FRAME_SAMPLES,)
    capture_time: float  # wall-clock seconds (time.time()) when the first sample was captured


def silence() -> np.ndarray:
    return np.zeros(FRAME_SAMPLES, dtype=np.int16)


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """PCM16 to the [-1, 1) float32 that Whisper and the resampler expect."""
    return pcm.astype(np.float32) / 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


class Framer:
    """Cuts an arbitrary stream of samples into whole frames, keeping the remainder.

    Device callbacks and resamplers deliver chunks of whatever size suits them; this is
    the one place that turns those into 20 ms frames.
    """

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        whole = data.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = data[whole:].copy()
        return [data[i : i + FRAME_SAMPLES] for i in range(0, whole, FRAME_SAMPLES)]
