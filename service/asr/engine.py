"""The one Whisper model of this process, and the one OS thread that runs it for every call.

Every call's ready utterances (finals) and provisional requests (partials) go into one
queue; the worker takes as many as are waiting and decodes them *together*: one batched
log-mel, one encoder pass for the whole batch, language detection in one pass, then batched
greedy decoding per (language, task, prompt length) group, each item with its own stream's
committed text as prompt, and temperature fallback only for the items whose checks failed.
On a GPU this is what lets one model serve dozens of calls; on a CPU a batch costs what its
items cost one by one, so there the node decodes one at a time (see `_load`).

Priorities when behind: finals always go first; a stream's newer partial replaces its older
one, and a partial that waited too long is dropped, so overload costs partials, never
finals, and lag does not grow. Every drop is counted in `stats` and logged.

Threads: requests are put from greenlets under a native lock and wake the worker through a
C `SimpleQueue`; results come back through `ThreadToHub` (an async watcher), and callbacks run
on the hub. The worker never touches gevent (it does not even log: reasons travel with the
results and are logged on the hub).
"""

from __future__ import annotations

import _queue
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import numpy as np
from gevent.event import Event
from gevent.monkey import get_original

from service.asr import filters
from service.audio.bridge import ThreadToHub

log = logging.getLogger(__name__)

_allocate_lock = get_original("_thread", "allocate_lock")
_start_new_thread = get_original("_thread", "start_new_thread")

MAX_QUEUED_FINALS = 256  # utterances waiting for the model, across all calls
PARTIAL_STALE_S = 1.5  # a partial that waited longer than this is no longer worth showing
SATURATED_S = 2.0  # a worker not idle once in this long is behind: partials are declined
DEFAULT_MAX_BATCH = 16
TASKS = ("transcribe", "translate")
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_SEED = 0
PROMPT_MAX_TOKENS = 32  # ~150 English characters: most streams share one length
PROMPT_TOKEN_STEP = 8  # prompt lengths are rounded down to this: see prompt_tokens()


@dataclass
class Request:
    """One decode: a final (an ended utterance) or a partial (an open one, so far)."""

    kind: str  # "final" | "partial"
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str | None  # None: detect
    task: str  # "transcribe" | "translate"
    on_done: Callable[[Outcome], None]  # called on the hub, exactly once
    stream: Any = None  # partials of one stream replace each other
    label: str = ""
    queued_at: float = field(default_factory=time.monotonic)
    # The stream's committed text (never a partial's) and its language: context for the
    # decoder, as `whisper.transcribe` gives each window the text before it.
    prompt: str | None = None
    prompt_language: str | None = None


@dataclass
class Outcome:
    text: str | None  # None when nothing is to be shown (dropped, or an error)
    dropped: str | None = None  # why, when the candidate was rejected
    language: str | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    error: str | None = None
    queued_s: float = 0.0  # waiting for the worker
    decode_s: float = 0.0  # the batch it was decoded in
    batch: int = 0


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"IM_DEVICE={requested} but torch sees no CUDA device")
    return requested


def batched_log_mel(audios: list[np.ndarray], n_mels: int, device: str):
    """Whisper's log-mel for a batch of clips, each padded to its 30 s window.

    `whisper.log_mel_spectrogram` takes a batch but clamps to the batch-wide maximum; this
    clamps per clip, so an item's features do not depend on what it was batched with.
    """
    import torch
    import whisper
    from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, mel_filters

    batch = np.zeros((len(audios), N_SAMPLES), dtype=np.float32)
    for i, a in enumerate(audios):
        a = a[:N_SAMPLES]
        batch[i, : a.size] = a
    audio = torch.from_numpy(batch).to(device)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(audio.device, n_mels) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    mel = (log_spec + 4.0) / 4.0
    assert mel.shape[-1] == whisper.audio.N_FRAMES
    return mel


class AsrEngine:
    def __init__(
        self,
        model_name: str,
        model_dir,
        device: str = "auto",
        max_batch: int = 0,  # 0: auto, see _load
        sequential: bool = False,
    ) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.requested_device = device
        self.max_batch = 1 if sequential else max_batch
        self.device: str | None = None
        self.model = None
        self.multilingual = False
        self._lock = _allocate_lock()
        self._finals: deque[Request] = deque()
        self._partials: dict[Any, Request] = {}  # newest per stream
        self._wake: _queue.SimpleQueue = _queue.SimpleQueue()
        self._results: ThreadToHub[tuple[Callable[[Outcome], None], Outcome]] = ThreadToHub(
            maxlen=MAX_QUEUED_FINALS * 4  # never reached: at most one result per request
        )
        self._deliverer: gevent.Greenlet | None = None
        self._loaded = Event()
        self._load_error: BaseException | None = None
        self._closed = False
        self._busy_since: float | None = None
        self._idle_at = time.monotonic()  # last time the worker found nothing to do
        self._started_at = time.monotonic()
        self.stats: dict[str, float] = {
            "finals": 0,
            "partials": 0,
            "batches": 0,
            "batch_items": 0,
            "max_batch_seen": 0,
            "busy_s": 0.0,
            "fallbacks": 0,
            "errors": 0,
            "rejected_queue_full": 0,
            "partials_superseded": 0,
            "partials_skipped_busy": 0,
            "partials_stale": 0,
            "partials_filtered": 0,
            **{f"dropped_{reason}": 0 for reason in filters.REASONS},
        }

    # -- life cycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm the model on the worker thread; the calling greenlet waits, the
        hub does not."""
        started = time.monotonic()
        self._deliverer = gevent.spawn(self._deliver)
        _start_new_thread(self._thread_main, ())
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        log.info(
            "model %s loaded on %s in %.1f s (max batch %d)",
            self.model_name,
            self.device,
            time.monotonic() - started,
            self.max_batch,
        )

    def _thread_main(self) -> None:
        try:
            self._load()
        except BaseException as e:  # reported on the hub by load()
            self._load_error = e
        self._results.put_nowait((self._on_loaded, Outcome(text=None)))
        if self._load_error is None:
            self._loop()

    def _on_loaded(self, _: Outcome) -> None:
        self._loaded.set()

    def _load(self) -> None:
        import torch

        from service.asr import weights

        self.device = pick_device(self.requested_device)
        if self.max_batch == 0:
            # Auto: a GPU decodes a batch in about the time of one item, a CPU in the time
            # of all of them, and a batch's items all finish when the last does. Measured
            # here (tiny.en, 2 cores, 4 calls): batched p50 2.76 s against 1.83 s one at a
            # time, at the same throughput. So batches on CUDA, one at a time on a CPU.
            self.max_batch = DEFAULT_MAX_BATCH if self.device.startswith("cuda") else 1
        if self.device == "cpu":
            # Leave a core to the hub (audio, VAD, sockets): intra-op threads that compete
            # with it stall on their barriers, measured here as 2-4x slower decodes.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        self.model = weights.load_model(self.model_name, self.model_dir, self.device)
        self.multilingual = bool(self.model.is_multilingual)
        # The first decodes pay one-off costs (allocations, kernel selection, lazy imports):
        # pay them now, through the same batched path, at one and at several items.
        # On a CPU a batch costs in proportion to its size, so two items warm every path.
        quiet = np.zeros(16_000 * 2, dtype=np.float32)
        sizes = {1, self.max_batch} if self.fp16 else {1, min(2, self.max_batch)}
        for n in sorted(sizes):
            reqs = [
                Request("final", quiet, None if self.multilingual else "en", "transcribe", _noop)
                for _ in range(n)
            ]
            self.decode_batch(reqs)
        self.reset_stats()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set() and self._load_error is None

    @property
    def fp16(self) -> bool:
        return bool(self.device and self.device.startswith("cuda"))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._finals) + len(self._partials) + (1 if self._busy_since else 0)

    def utilisation(self) -> float:
        """Share of wall time since start (or the last reset) the worker spent decoding."""
        busy = self.stats["busy_s"]
        if self._busy_since is not None:
            busy += time.monotonic() - self._busy_since
        return busy / max(1e-9, time.monotonic() - self._started_at)

    def reset_stats(self) -> None:
        for key in self.stats:
            self.stats[key] = 0
        self._started_at = time.monotonic()

    def close(self) -> None:
        self._closed = True
        self._wake.put(None)
        if self._deliverer is not None:
            self._deliverer.kill()
        self._results.close()

    # -- hub side -----------------------------------------------------------------------

    def submit(self, request: Request) -> bool:
        """Queue a request; False when it cannot be taken (queue full, counted and logged,
        or no model). A partial replaces the same stream's queued partial; a final drops it."""
        if self._closed or not self.loaded:
            return False
        if request.kind == "partial" and self.saturated:
            self.stats["partials_skipped_busy"] += 1
            return False
        superseded = None
        with self._lock:
            if request.kind == "final":
                if len(self._finals) >= MAX_QUEUED_FINALS:
                    full = True
                else:
                    full = False
                    self._finals.append(request)
                    superseded = self._partials.pop(request.stream, None)
            else:
                full = False
                superseded = self._partials.pop(request.stream, None)
                self._partials[request.stream] = request
        if full:
            self.stats["rejected_queue_full"] += 1
            log.warning("ASR queue full: dropped an utterance of %s", request.label)
            return False
        if superseded is not None:
            self.stats["partials_superseded"] += 1
            superseded.on_done(Outcome(text=None, dropped="superseded"))
        self._wake.put(None)
        return True

    @property
    def saturated(self) -> bool:
        """Busy without a break for a while: finals alone fill the worker, so partials
        would only make them later."""
        return (
            self._busy_since is not None and time.monotonic() - self._idle_at > SATURATED_S
        ) or bool(self._finals)

    def _deliver(self) -> None:
        while True:
            item = self._results.get()
            if item is None:
                if self._results._closed:
                    return
                continue
            callback, outcome = item
            self._count(outcome)
            try:
                callback(outcome)
            except Exception:
                log.exception("an ASR result callback failed")

    def _count(self, o: Outcome) -> None:
        if o.dropped == "stale":
            self.stats["partials_stale"] += 1
        elif o.dropped == "error":
            self.stats["errors"] += 1

    # -- worker thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[Request], list[Request]]:
        """Up to max_batch requests: finals first, then the freshest partials; stale
        partials are returned separately to be reported as dropped."""
        now = time.monotonic()
        with self._lock:
            batch: list[Request] = []
            while self._finals and len(batch) < self.max_batch:
                batch.append(self._finals.popleft())
            stale = [r for r in self._partials.values() if now - r.queued_at > PARTIAL_STALE_S]
            for r in stale:
                del self._partials[r.stream]
            if len(batch) < self.max_batch and self._partials:
                fresh = sorted(self._partials.values(), key=lambda r: r.queued_at)
                for r in fresh[: self.max_batch - len(batch)]:
                    del self._partials[r.stream]
                    batch.append(r)
            return batch, stale

    def _loop(self) -> None:
        while not self._closed:
            batch, stale = self._take()
            for r in stale:
                self._results.put_nowait((r.on_done, Outcome(text=None, dropped="stale")))
            if not batch:
                self._idle_at = time.monotonic()
                with contextlib.suppress(_queue.Empty):
                    self._wake.get(timeout=0.5)
                continue
            started = time.monotonic()
            self._busy_since = started
            try:
                outcomes = self.decode_batch(batch)
            except Exception as e:  # a bad batch must not kill the worker
                outcomes = [Outcome(text=None, dropped="error", error=repr(e)) for _ in batch]
            took = time.monotonic() - started
            self._busy_since = None
            self.stats["busy_s"] += took
            self.stats["batches"] += 1
            self.stats["batch_items"] += len(batch)
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
            for r, o in zip(batch, outcomes, strict=True):
                o.queued_s = started - r.queued_at
                o.decode_s = took
                o.batch = len(batch)
                self.stats["finals" if r.kind == "final" else "partials"] += 1
                if o.dropped and r.kind == "final" and o.dropped != "error":
                    self.stats[f"dropped_{o.dropped}"] += 1
                elif o.dropped and r.kind == "partial":
                    self.stats["partials_filtered"] += 1
                self._results.put_nowait((r.on_done, o))

    def decode_batch(self, batch: list[Request]) -> list[Outcome]:
        """One encoder pass for the batch, then greedy decoding per (language, task,
        prompt length); retries at higher temperatures go without the prompt."""
        import torch
        from whisper.decoding import DecodingOptions
        from whisper.tokenizer import get_tokenizer

        model = self.model
        assert model is not None
        tokenizer = get_tokenizer(self.multilingual, num_languages=model.num_languages)
        with torch.no_grad():
            mel = batched_log_mel([r.audio for r in batch], model.dims.n_mels, self.device)
            if self.fp16:
                mel = mel.half()
            features = model.embed_audio(mel)
            languages = [r.language if self.multilingual else "en" for r in batch]
            unknown = [i for i, lang in enumerate(languages) if lang is None]
            if unknown:
                _, probs = model.detect_language(features[unknown], tokenizer)
                for i, p in zip(unknown, probs, strict=True):
                    languages[i] = max(p, key=p.get)

            prompts: list[list[int]] = []
            outcomes: list[Outcome | None] = [None] * len(batch)
            unsure: dict[int, tuple[Any, float]] = {}  # item -> its most confident low_logprob
            groups: dict[tuple[str, str, int], list[int]] = {}
            for i, r in enumerate(batch):
                task = r.task if self.multilingual else "transcribe"
                # Text in another language than the one being decoded would only mislead.
                same = r.prompt_language in (None, languages[i])
                prompts.append(prompt_tokens(tokenizer, r.prompt) if same else [])
                groups.setdefault((languages[i], task, len(prompts[i])), []).append(i)
            for (language, task, _), idx in groups.items():
                durations = [batch[i].audio.size / 16_000 for i in idx]
                sample_len = min(224, filters.max_tokens(max(durations)) + 1)
                todo = idx
                for temperature in (0.0, *FALLBACK_TEMPERATURES):
                    opts = DecodingOptions(
                        task=task,
                        language=language,
                        temperature=temperature,
                        sample_len=sample_len,
                        without_timestamps=True,
                        fp16=self.fp16,
                    )
                    # A decode that failed the checks with context gets none on retry: a
                    # prompt can pull the model into repeating it.
                    rows = [prompts[i] for i in todo] if temperature == 0.0 else []
                    if temperature > 0:
                        # Sampling draws on torch's global generator, which only this thread
                        # uses: seeded, the same audio in the same batch always gets the
                        # same transcript, as a greedy decode does.
                        torch.manual_seed(FALLBACK_SEED)
                    results = _prompted_decoding()(model, opts, rows).run(features[todo])
                    retry = []
                    for i, res in zip(todo, results, strict=True):
                        # Only finals earn a second try: a partial is soon replaced anyway.
                        last = (
                            temperature == FALLBACK_TEMPERATURES[-1] or batch[i].kind == "partial"
                        )
                        verdict = filters.judge(res, batch[i].audio.size / 16_000)
                        if verdict.reason == "low_logprob":
                            best = unsure.get(i)
                            if best is None or res.avg_logprob > best[0].avg_logprob:
                                unsure[i] = (res, temperature)
                        if verdict.retry and not last:
                            retry.append(i)
                        elif verdict.reason is None:
                            outcomes[i] = _outcome(res, None, language, temperature)
                        elif verdict.retry and i in unsure:
                            # No try was sound and sure: keep the most confident sound one.
                            best, best_temperature = unsure[i]
                            outcomes[i] = _outcome(best, None, language, best_temperature)
                        else:
                            outcomes[i] = _outcome(res, verdict.reason, language, temperature)
                    if not retry:
                        break
                    self.stats["fallbacks"] += len(retry)
                    todo = retry
        return [o if o is not None else Outcome(text=None, dropped="error") for o in outcomes]


def _outcome(res: Any, dropped: str | None, language: str, temperature: float) -> Outcome:
    return Outcome(
        text=None if dropped else filters.clean(res.text),
        dropped=dropped,
        language=language,
        avg_logprob=round(float(res.avg_logprob), 4),
        no_speech_prob=round(float(res.no_speech_prob), 4),
        compression_ratio=round(float(res.compression_ratio), 4),
        temperature=temperature,
    )


def prompt_tokens(tokenizer, text: str | None) -> list[int]:
    """The end of a stream's committed text as decoder context, in whole steps of
    PROMPT_TOKEN_STEP tokens (at most PROMPT_MAX_TOKENS).

    The decoder has learned positions, so items in one batch need prompts of one length.
    Rounding each prompt down on its own keeps a stream's decode independent of what it
    was batched with, while streams with a few sentences behind them share a length (and
    a batch).
    """
    if not text or not text.strip():
        return []
    tokens = tokenizer.encode(" " + text.strip())
    keep = min(PROMPT_MAX_TOKENS, len(tokens) // PROMPT_TOKEN_STEP * PROMPT_TOKEN_STEP)
    return tokens[len(tokens) - keep :] if keep else []


@functools.cache
def _prompted_decoding() -> type:
    """`whisper.decoding.DecodingTask` with a prompt per batch item (defined on first use:
    importing whisper costs seconds and this module is imported by processes that never
    decode)."""
    import dataclasses

    import torch
    from whisper.decoding import DecodingTask

    class PromptedDecoding(DecodingTask):
        """Whisper builds one row of initial tokens (<|startofprev|> prompt
        <|startoftranscript|> ...) and repeats it for every item; here each item's row
        carries its own prompt. The rows are equally long (the caller groups by prompt
        length), so all Whisper derives from the row length (where sampling begins, the
        key/value cache, the logit filters) holds."""

        def __init__(self, model, options, prompts: list[list[int]]) -> None:
            self._prompts = prompts if prompts and prompts[0] else None
            if self._prompts is not None:
                if len({len(p) for p in self._prompts}) != 1:
                    raise ValueError("the prompts of one batch must be equally long")
                options = dataclasses.replace(options, prompt=list(self._prompts[0]))
            super().__init__(model, options)

        def _main_loop(self, audio_features, tokens):
            if self._prompts is not None:
                head = [[self.tokenizer.sot_prev, *p] for p in self._prompts]
                rows = torch.tensor(head).repeat_interleave(self.n_group, dim=0)
                tokens = torch.cat([rows.to(tokens.device), tokens[:, len(head[0]) :]], dim=1)
            return super()._main_loop(audio_features, tokens)

    return PromptedDecoding


def _noop(_: Outcome) -> None:
    pass
