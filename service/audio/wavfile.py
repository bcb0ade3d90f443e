"""Reading WAV files as call audio: any PCM16 rate or channel count, out comes 16 kHz mono."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

from service.audio.frames import SAMPLE_RATE


class AudioFileError(ValueError):
    """The file cannot serve as call audio; the message says why."""


def read_wav(path: str | Path) -> np.ndarray:
    """Whole file as int16 mono at 16 kHz (the call's rate), resampled if needed."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"no such file: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioFileError(f"{path}: only 16-bit PCM WAV is supported")
            channels, rate = w.getnchannels(), w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"{path}: not a readable WAV file ({exc})") from None
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != SAMPLE_RATE:
        data = soxr.resample(data, rate, SAMPLE_RATE)
    return np.ascontiguousarray(data, dtype=np.int16)
