"""The one Whisper model of this process, and the worker that runs it.

Inference runs on a dedicated OS thread (torch releases the GIL while it computes), so the
gevent hub keeps serving HTTP and moving audio while an utterance is decoded. Work is queued
from greenlets and results are delivered back on the hub, so callers never deal with threads.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import numpy as np
from gevent.queue import Full, Queue
from gevent.threadpool import ThreadPool

from service.asr.segmenter import Utterance

log = logging.getLogger(__name__)

# Whisper's own decoding safeguards, as used by `whisper.transcribe`'s defaults.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
MAX_QUEUED = 256  # utterances waiting for the model, across all calls
_NO_WORDS = re.compile(r"^[\W_]*$")


@dataclass(frozen=True)
class SegmentResult:
    start_s: float
    end_s: float
    text: str
    language: str | None
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None


@dataclass
class Job:
    utterance: Utterance
    language: str | None
    on_result: Callable[[list[SegmentResult]], None]
    label: str = ""
    queued_at: float = field(default_factory=time.monotonic)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"IM_DEVICE={requested} but torch sees no CUDA device")
    return requested


class AsrEngine:
    def __init__(self, model_name: str, model_dir, device: str = "auto") -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.requested_device = device
        self.device: str | None = None
        self.model = None
        self.multilingual = False
        self._queue: Queue[Job | None] = Queue(maxsize=MAX_QUEUED)
        self._pool = ThreadPool(1)  # the inference thread: one model, one decode at a time
        self._worker: gevent.Greenlet | None = None
        self._busy = False
        self.stats = {"transcribed": 0, "dropped_no_speech": 0, "rejected_queue_full": 0}

    # -- life cycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm the model on the inference thread (the hub stays responsive)."""
        started = time.monotonic()
        self._pool.apply(self._load)
        log.info(
            "model %s loaded on %s in %.1f s",
            self.model_name,
            self.device,
            time.monotonic() - started,
        )
        self._worker = gevent.spawn(self._run)

    def _load(self) -> None:
        from service.asr import weights

        self.device = pick_device(self.requested_device)
        self.model = weights.load_model(self.model_name, self.model_dir, self.device)
        self.multilingual = bool(self.model.is_multilingual)
        # A first decode pays one-off costs (allocations, kernels); pay them now.
        self._transcribe(np.zeros(16_000, dtype=np.float32), "en")

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def fp16(self) -> bool:
        return bool(self.device and self.device.startswith("cuda"))

    @property
    def pending(self) -> int:
        return self._queue.qsize() + (1 if self._busy else 0)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()
        self._pool.kill()

    # -- work ---------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Queue an utterance; False (and logged) if the queue is full."""
        try:
            self._queue.put_nowait(job)
            return True
        except Full:
            self.stats["rejected_queue_full"] += 1
            log.warning("ASR queue full: dropped an utterance of %s", job.label)
            return False

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._busy = True
            try:
                results = self._pool.apply(self._job, (job,))
            except Exception:
                log.exception("transcription failed for %s", job.label)
                results = []
            finally:
                self._busy = False
            try:
                job.on_result(results)
            except Exception:
                log.exception("storing transcription of %s failed", job.label)

    def _job(self, job: Job) -> list[SegmentResult]:
        utt = job.utterance
        out = []
        for seg in self._transcribe(utt.audio, job.language):
            text = seg["text"].strip()
            if _NO_WORDS.match(text):
                continue
            if (
                seg["no_speech_prob"] > NO_SPEECH_THRESHOLD
                and seg["avg_logprob"] < LOGPROB_THRESHOLD
            ):
                self.stats["dropped_no_speech"] += 1
                log.info("dropped %r from %s: Whisper judged it non-speech", text, job.label)
                continue
            start = utt.start_s + float(seg["start"])
            end = min(utt.start_s + float(seg["end"]), utt.end_s)
            out.append(
                SegmentResult(
                    start_s=round(start, 3),
                    end_s=round(max(start, end), 3),
                    text=text,
                    language=seg.get("language"),
                    avg_logprob=float(seg["avg_logprob"]),
                    no_speech_prob=float(seg["no_speech_prob"]),
                    compression_ratio=float(seg["compression_ratio"]),
                )
            )
        self.stats["transcribed"] += 1
        log.debug(
            "%s: %.1f s utterance transcribed %.2f s after it was queued",
            job.label,
            utt.end_s - utt.start_s,
            time.monotonic() - job.queued_at,
        )
        return out

    def _transcribe(self, audio: np.ndarray, language: str | None) -> list[dict]:
        import whisper

        if not self.multilingual:
            language = "en"
        result = whisper.transcribe(
            self.model,
            audio,
            language=language,
            fp16=self.fp16,
            temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            logprob_threshold=LOGPROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            # Each utterance stands alone: conditioning on earlier text is how Whisper
            # carries a hallucination from one window into the next.
            condition_on_previous_text=False,
            verbose=None,
        )
        for seg in result["segments"]:
            seg["language"] = result.get("language") or language
        return result["segments"]
