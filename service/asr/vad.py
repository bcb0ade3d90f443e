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

from service.frames import FRAME_SAMPLES, SAMPLE_RATE

VAD_KINDS = ("silero", "webrtc")


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

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
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
        return self.probability >= self.threshold


def make_vad(kind: str, aggressiveness: int = 2, threshold: float = 0.5) -> Vad:
    if kind == "silero":
        return SileroVad(threshold)
    if kind == "webrtc":
        return WebRtcVad(aggressiveness)
    raise ValueError(f"unknown VAD {kind!r}: use one of {', '.join(VAD_KINDS)}")
