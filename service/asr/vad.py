"""Voice activity detectors behind one per-20-ms-frame interface.

Two are offered because they trade differently (measured by ``scripts/bench_vad.py``, figures
in docs/benchmarks.md): webrtcvad is a tiny GMM, the cheaper by far, but fires on loud
broadband noise; Silero is a small neural net (onnxruntime, one thread), dearer per frame yet
still a small share of a frame's 20 ms, that tells speech from noise far better. The
segmenter only ever asks "is this frame speech?", so either can sit behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from service.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE

VAD_KINDS = ("silero", "webrtc")
FULL_SCALE = 32768.0
GAIN_TARGET_DBFS = -26.0  # a normal speaking level on a call (the dev clips: about -26)
GAIN_WINDOW_MS = 2000  # the level is the loud end of this much recent audio ...
GAIN_PERCENTILE = 90  # ... this percentile of its frames' RMS
GAIN_FLOOR_DBFS = -80.0  # below this nothing is amplified further (dither, digital hush)


class Vad(Protocol):
    def is_speech(self, pcm: np.ndarray) -> bool:
        """One 20 ms int16 frame, in stream order."""
        ...


class WebRtcVad:
    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, pcm: np.ndarray) -> bool:
        return self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE)


class SileroUnavailable(RuntimeError):
    """onnxruntime or the Silero model file is missing."""


def silero_model_path() -> Path:
    """The ONNX model shipped in the ``silero-vad`` wheel (installed without its torch deps)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SileroUnavailable("the silero-vad package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise SileroUnavailable(f"Silero model not found at {path}")
    return path


_SESSION = None


def _silero_session():
    """One ONNX session per process, shared by every stream (each keeps its own state)."""
    global _SESSION
    if _SESSION is None:
        try:
            import onnxruntime
        except ImportError as e:
            raise SileroUnavailable("onnxruntime is not installed") from e
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        _SESSION = onnxruntime.InferenceSession(
            str(silero_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )
    return _SESSION


class SileroVad:
    """Silero v5/v6 over onnxruntime, stepped in its native 32 ms windows.

    Frames arrive in 20 ms; the net wants 512 samples plus 64 of context, so samples are
    buffered and each frame is judged by the newest window's probability (at most 12 ms old).
    """

    WINDOW = 512
    CONTEXT = 64

    def __init__(self, threshold: float = 0.5, hysteresis: float = 0.0) -> None:
        self.threshold = threshold
        # Once speech is heard, frames count as speech down to threshold - hysteresis (as
        # Silero's own get_speech_timestamps does): weak syllables inside an utterance
        # (hoarse, whispered, far) do not end it, and onsets still need the full threshold.
        self.off_threshold = threshold - hysteresis
        self._speaking = False
        self._session = _silero_session()
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.probability = 0.0

    def is_speech(self, pcm: np.ndarray) -> bool:
        if pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected {FRAME_SAMPLES} samples")
        self._buffer = np.concatenate([self._buffer, pcm.astype(np.float32) / 32768.0])
        while self._buffer.size >= self.WINDOW:
            window, self._buffer = self._buffer[: self.WINDOW], self._buffer[self.WINDOW :]
            x = np.concatenate([self._context, window])[None, :]
            out, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": self._sr}
            )
            self._context = window[-self.CONTEXT :]
            self.probability = float(out[0, 0])
        self._speaking = self.probability >= (
            self.off_threshold if self._speaking else self.threshold
        )
        return self._speaking


class LevelledVad:
    """A VAD that hears its input at a speaking level, whatever the recorded level.

    The gain brings the loud end of the last GAIN_WINDOW_MS (the GAIN_PERCENTILE of its
    frames' RMS, or the frame's own if louder) to GAIN_TARGET_DBFS, by at most
    `max_gain_db` and never below 0 dB. The frame's own RMS makes the attack instant (a
    loud onset after a hush is not clipped); the percentile over a window holds the gain
    through pauses, so a quiet talker's gaps are not pumped up to speech level between
    words. Only the VAD's input is scaled.
    """

    def __init__(self, inner: Vad, max_gain_db: float) -> None:
        self._inner = inner
        self._max_gain = 10 ** (max_gain_db / 20)
        self._target = FULL_SCALE * 10 ** (GAIN_TARGET_DBFS / 20)
        self._floor = FULL_SCALE * 10 ** (GAIN_FLOOR_DBFS / 20)
        self._rms = np.zeros(GAIN_WINDOW_MS // FRAME_MS)  # a ring of recent frames' RMS
        self._count = 0
        self.gain = 1.0

    def is_speech(self, pcm: np.ndarray) -> bool:
        x = pcm.astype(np.float32)
        rms = float(np.sqrt(np.dot(x, x) / x.size))
        self._rms[self._count % self._rms.size] = rms
        self._count += 1
        recent = self._rms[: min(self._count, self._rms.size)]
        k = (recent.size - 1) * GAIN_PERCENTILE // 100
        # The frame's own RMS too: a loud onset after a hush is never driven into clipping.
        level = max(float(np.partition(recent, k)[k]), rms, self._floor)
        self.gain = min(self._max_gain, max(1.0, self._target / level))
        if self.gain > 1.0:
            pcm = np.clip(x * self.gain, -32768, 32767).astype(np.int16)
        return self._inner.is_speech(pcm)


def make_vad(
    kind: str,
    aggressiveness: int = 2,
    threshold: float = 0.5,
    *,
    hysteresis: float = 0.0,
    max_gain_db: float = 0.0,
) -> Vad:
    """`max_gain_db` > 0 puts Silero behind a `LevelledVad` gain stage. webrtcvad never is:
    it takes loud broadband noise for speech, so amplified hiss would open utterances."""
    if kind == "silero":
        vad = SileroVad(threshold, hysteresis)
        return LevelledVad(vad, max_gain_db) if max_gain_db > 0 else vad
    if kind == "webrtc":
        return WebRtcVad(aggressiveness)
    raise ValueError(f"unknown VAD {kind!r}: use one of {', '.join(VAD_KINDS)}")
