"""Whisper's own long-form decoding of a whole recorded side, with word timestamps, on one
low-priority OS thread that gives way to live decoding (the post-call pass's ASR).

Why a model of its own: the live worker's model is shared by every call's requests, and
Whisper's decoding installs forward hooks on the model (its key/value cache, and the
cross-attention capture behind word timestamps); two threads decoding one model at once
would read each other's hooks. The pass's model is loaded on its thread (``IM_FINAL_MODEL``,
any catalogue name, through ``weights.load_model`` and its memory check) by ``prepare``, which
the node calls at start beside the live model's load when passes run automatically, or else
at its first job. The load and the first word-timed decode's one-off work (numba compiling
Whisper's DTW) hold the GIL for up to a few hundred ms at a time: at start, no call hears it.

Below live decoding, three ways:

- one OS thread at a lower priority (``os.nice`` is per thread on Linux), with one torch
  intra-op thread (``torch.set_num_threads`` is per thread too), so the live worker keeps
  its cores;
- before each 30 s window (each ``model.decode`` that ``whisper.transcribe`` makes), and
  before each forward of its encoder and decoder (a decoder step is one token), it waits
  while the live ASR has anything queued or decoding (``busy``): live work that arrives
  mid-window waits for one step of the pass at most, not for the window;
- it holds nothing the live path needs: no lock of the scheduler beyond reading its size.

Nothing said is lost, nothing is invented: long-form decoding can jump over a stretch of
speech (a timestamp token that skips ahead) and can put words in silence ("you" on a
silent side). The VAD the live path uses marks where speech is; only those stretches are
decoded (``speech_clips``), a segment with no speech under it is dropped, and speech that
no segment covers is decoded again on its own (``recovered``).

The thread never touches gevent: its progress and results travel to the hub through a
``ThreadToHub``, and the greenlet that asked waits there, cooperatively.
"""

from __future__ import annotations

import _queue
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gevent.monkey import get_original

from service.asr.vad import Vad
from service.frames import FRAME_SAMPLES, SAMPLE_RATE
from service.threadhub import ThreadToHub, start_native_thread
from service.vocab import Task

WINDOW_S = 30.0  # whisper.transcribe's window
GIVE_WAY_POLL_S = 0.05  # how often a waiting window looks at the live backlog again
_sleep = get_original("time", "sleep")  # this thread's own sleep, never gevent's
NICE = 10  # added to the pass thread's niceness (Linux: that thread only)
TORCH_THREADS = 1
CLOSE_WAIT_S = 5.0  # longest close() waits for a decode to stop at its next step
# Whisper's long-form defaults, and its own guard against text invented in long silences
# (a recorded side is mostly the other person talking): needs word timestamps.
HALLUCINATION_SILENCE_S = 2.0
SPAN_MERGE_S = 0.5  # VAD speech closer than this is one stretch
SPAN_MIN_S = 0.25  # shorter VAD blips are not speech worth a decode
GAP_PAD_S = 0.3  # context around a stretch of speech decoded on its own
CLIP_PAD_S = 0.5  # decoded around each stretch of speech: its first and last sounds
CLIP_MERGE_S = 5.0  # silences shorter than this are decoded through, longer ones skipped


class LongFormError(RuntimeError):
    """The pass's model could not be loaded, or a decode failed; the message says why."""


@dataclass(frozen=True)
class LongSegment:
    """One segment of ``whisper.transcribe``, times in seconds into the side."""

    start: float
    end: float
    text: str
    words: list[dict[str, Any]]  # [{word, start, end, probability}], times into the side
    language: str | None
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None
    recovered: bool = False  # speech the long-form decode skipped, decoded on its own


@dataclass
class _Job:
    audio: np.ndarray
    language: str | None
    task: Task
    replies: ThreadToHub[tuple[str, Any]]
    cancelled: bool = field(default=False)
    load_only: bool = False  # prepare(): load the model, decode nothing


class LongFormTranscriber:
    """Construct on the hub; ``transcribe`` from one greenlet at a time; ``close`` once."""

    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        device: str,
        compute_type: str,
        download_base: str,
        busy: Callable[[], bool],
        make_vad: Callable[[], Vad],
    ) -> None:
        self.model_name = model_name
        self._model_dir = model_dir
        self._requested_device = device
        self._requested_compute_type = compute_type
        self._download_base = download_base
        self._busy = busy  # True while live decoding has work: read from the pass thread
        self._make_vad = make_vad  # a fresh one per side (a VAD keeps state)
        self._jobs: _queue.SimpleQueue[_Job | None] = _queue.SimpleQueue()
        self._started = False
        self._closed = False
        self._exited = False  # set by the thread as it ends
        self._model: Any = None
        self._fp16 = False
        self.waited_s = 0.0  # time windows spent giving way to live decoding

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        task: Task,
        on_progress: Callable[[float], None],
    ) -> list[LongSegment]:
        """All of ``audio`` (float32 mono 16 kHz). Waits cooperatively; ``on_progress``
        (share of the audio started, 0..1) runs on the hub. Raises LongFormError."""
        return self._submit(_Job(audio, language, task, ThreadToHub(maxlen=4096)), on_progress)

    def prepare(self) -> None:
        """Load the model (and compile what its first word-timed decode would) now, waiting
        cooperatively. Raises LongFormError: a model that cannot load stops the node at
        start rather than failing every pass."""
        job = _Job(np.zeros(0, np.float32), None, Task.TRANSCRIBE, ThreadToHub(maxlen=4))
        job.load_only = True
        self._submit(job, lambda _share: None)

    def _submit(self, job: _Job, on_progress: Callable[[float], None]) -> list[LongSegment]:
        if self._closed:
            raise LongFormError("the node is closing")
        if not self._started:
            self._started = True
            start_native_thread(self._main)
        self._jobs.put(job)
        try:
            while True:
                item = job.replies.get()
                if item is None:
                    raise LongFormError("the node is closing")
                kind, value = item
                if kind == "progress":
                    on_progress(value)
                elif kind == "done":
                    return value
                else:
                    raise LongFormError(value)
        finally:
            job.cancelled = True  # a greenlet killed mid-wait: the thread drops the job
            job.replies.close()

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop the thread: a decode under way stops at its next step. Waits (from a
        greenlet, bounded) for the thread to leave torch, so the process can exit."""
        import gevent

        self._closed = True
        self._jobs.put(None)
        deadline = time.monotonic() + wait_s
        while self._started and not self._exited and time.monotonic() < deadline:
            gevent.sleep(0.05)

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        # Lower this thread only (Linux keeps a niceness per thread), and one torch
        # intra-op thread for it (torch keeps that per thread as well).
        with contextlib.suppress(OSError):
            os.nice(NICE)
        import torch

        torch.set_num_threads(TORCH_THREADS)
        try:
            self._serve()
        finally:
            self._exited = True

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._closed:
                return
            if job.cancelled:
                continue
            try:
                if self._model is None:
                    self._load()
                result: tuple[str, Any] = ("done", [] if job.load_only else self._run(job))
            except Exception as exc:  # reported on the hub; the thread carries on
                result = ("error", f"{type(exc).__name__}: {exc}"[:500])
            _reply(job, result)

    def _load(self) -> None:
        from service.asr import catalogue, memory, precision, weights
        from service.asr.engine import pick_device

        device = pick_device(self._requested_device)
        compute_type = precision.resolve(self._requested_compute_type, device)
        fetch = {"download_base": self._download_base or catalogue.DOWNLOAD_BASE}
        dims = weights.model_dims(self.model_name, self._model_dir, **fetch)
        memory.check(self.model_name, dims, compute_type, device, 1)
        model = weights.load_model(self.model_name, self._model_dir, device, compute_type, **fetch)
        if device == "cpu":
            # Word timings align tokens to audio with a DTW that numba compiles at its first
            # use (hundreds of ms holding the GIL): compile it here, with the load.
            import torch
            from whisper.timing import dtw

            dtw(torch.zeros(2, 2))
        self._fp16 = compute_type == "float16"
        self._model = model

    def _run(self, job: _Job) -> list[LongSegment]:
        model = self._model
        duration = max(len(job.audio) / SAMPLE_RATE, 1e-3)
        windows = 0
        expected = 1  # windows the decode is expected to take (set once the clips are known)
        decode = type(model).decode

        def gated_decode(mel: Any, options: Any) -> Any:
            nonlocal windows
            if job.cancelled or self._closed:
                raise LongFormError("cancelled")
            if options.temperature == 0.0:  # a new window (not a retry at a higher one)
                # Long-form decoding often seeks less than a window: under 1 until done.
                _reply(job, ("progress", min(0.99, windows / expected)))
                windows += 1
            self._give_way()
            return decode(model, mel, options)

        # An instance attribute, and hooks on this model only (the pass's own): before each
        # window, and before every forward of its encoder and decoder (one per token), the
        # pass gives way, so live work that arrives waits at most one step of it.
        model.decode = gated_decode
        hooks = [
            part.register_forward_pre_hook(lambda _module, _args: self._give_way())
            for part in (model.encoder, model.decoder)
        ]
        try:
            language = job.language or (None if model.is_multilingual else "en")
            # The VAD says where speech is. Only those stretches are decoded (a side of a
            # call is mostly the other person talking: each 30 s window of silence cost
            # a decode and its temperature fallbacks, and invited invented words);
            # long-form decoding can still jump over speech (a timestamp that skips
            # ahead) and invent words in what silence a clip holds: a segment without
            # speech under it is dropped, and speech no segment covers is decoded alone.
            spans = speech_spans(job.audio, self._make_vad())
            if not spans:
                return []
            clips = speech_clips(spans, duration)
            expected = sum(
                max(1, math.ceil((b - a) / WINDOW_S))
                for a, b in zip(clips[::2], clips[1::2], strict=True)
            )
            found, language = self._decode(job.audio, 0.0, language, job.task, clips=clips)
            kept = [seg for seg in found if speech_in(seg.start, seg.end, spans) > 0]
            for start, end in uncovered(spans, kept):
                a, b = max(0.0, start - GAP_PAD_S), end + GAP_PAD_S
                piece = job.audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]
                more, _ = self._decode(piece, a, language, job.task, condition=False)
                kept += [replace(seg, recovered=True) for seg in more]
        finally:
            del model.decode
            for hook in hooks:
                hook.remove()
        return sorted(kept, key=lambda seg: seg.start)

    def _decode(
        self,
        audio: np.ndarray,
        offset: float,
        language: str | None,
        task: Task,
        condition: bool = True,
        clips: list[float] | None = None,
    ) -> tuple[list[LongSegment], str | None]:
        """``whisper.transcribe`` of ``audio`` with word timestamps, times + ``offset``;
        and the language it decoded in. ``clips`` (start, end, start, end... seconds):
        decode only those stretches (whisper's ``clip_timestamps``)."""
        import whisper

        result = whisper.transcribe(
            self._model,
            audio,
            language=language,
            task=str(task),
            word_timestamps=True,
            condition_on_previous_text=condition,
            hallucination_silence_threshold=HALLUCINATION_SILENCE_S,
            clip_timestamps=clips if clips else "0",
            fp16=self._fp16,
            verbose=None,
        )
        found = result.get("language") or language
        return [_segment(seg, found, offset) for seg in result["segments"]], found

    def _give_way(self) -> None:
        """Wait while the live ASR has work (queued or decoding); stop when closing."""
        started = time.monotonic()
        while self._busy() and not self._closed:
            _sleep(GIVE_WAY_POLL_S)
        self.waited_s += time.monotonic() - started
        if self._closed:
            raise LongFormError("the node is closing")


def _reply(job: _Job, item: tuple[str, Any]) -> None:
    """To the greenlet waiting for ``job``, unless it stopped waiting (its queue closed)."""
    if not job.cancelled:
        with contextlib.suppress(Exception):  # closed on the hub meanwhile: nobody listens
            job.replies.put_nowait(item)


def speech_spans(audio: np.ndarray, vad: Vad) -> list[tuple[float, float]]:
    """Where the VAD hears speech in ``audio`` (float32, 16 kHz): (start, end) in seconds,
    pauses shorter than SPAN_MERGE_S closed, blips shorter than SPAN_MIN_S left out."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    spans: list[list[float]] = []
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    for i in range(len(pcm) // FRAME_SAMPLES):
        if not vad.is_speech(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]):
            continue
        t = i * frame_s
        if spans and t - spans[-1][1] <= SPAN_MERGE_S:
            spans[-1][1] = t + frame_s
        else:
            spans.append([t, t + frame_s])
    return [(a, b) for a, b in spans if b - a >= SPAN_MIN_S]


def speech_clips(spans: list[tuple[float, float]], duration: float) -> list[float]:
    """The stretches of a side worth decoding, flat (start, end, start, end...): each
    span of speech padded by CLIP_PAD_S, and those closer than CLIP_MERGE_S joined, so
    that the decoder hears a sentence's pauses and carries its context across them."""
    # Whisper seeks in 10 ms mel frames, and loops for ever on a clip that ends past the
    # last one (openai/whisper#2005): every time is floored to a frame, and ends one frame
    # short of the audio's end.
    last = math.floor(duration * 100 - 1) / 100
    clips: list[list[float]] = []
    for a, b in spans:
        a = math.floor(max(0.0, a - CLIP_PAD_S) * 100) / 100
        b = min(last, math.floor((b + CLIP_PAD_S) * 100) / 100)
        if b <= a:
            continue
        if clips and a - clips[-1][1] < CLIP_MERGE_S:
            clips[-1][1] = max(clips[-1][1], b)
        else:
            clips.append([a, b])
    return [t for clip in clips for t in clip]


def speech_in(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of speech (``spans``) between ``start`` and ``end``."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)


def uncovered(
    spans: list[tuple[float, float]], segments: list[LongSegment]
) -> list[tuple[float, float]]:
    """Speech spans that segments cover less than half of: what the decode skipped."""
    covered = [(seg.start, seg.end) for seg in segments]
    return [(a, b) for a, b in spans if speech_in(a, b, covered) < 0.5 * (b - a)]


def _segment(s: dict[str, Any], language: str | None, offset: float = 0.0) -> LongSegment:
    words = [
        {
            "word": w["word"],
            "start": round(float(w["start"]) + offset, 3),
            "end": round(float(w["end"]) + offset, 3),
            "probability": round(float(w["probability"]), 4),
        }
        for w in s.get("words") or []
    ]
    return LongSegment(
        start=float(s["start"]) + offset,
        end=float(s["end"]) + offset,
        text=str(s["text"]).strip(),
        words=words,
        language=language,
        avg_logprob=s.get("avg_logprob"),
        no_speech_prob=s.get("no_speech_prob"),
        compression_ratio=s.get("compression_ratio"),
    )
