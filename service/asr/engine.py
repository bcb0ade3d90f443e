"""The one Whisper model of this process, shared by every call: load, submit, close, stats.

Three parts behind this facade, one module each:

- `scheduler`: the queue's whole policy (finals first; superseded, stale and declined
  partials; queue full; what goes into the next batch), with no model and no threads;
- `worker`: the one OS thread that takes batches from the scheduler, decodes them and hands
  each outcome back to the hub, where the request's callback runs;
- `decoding`: Whisper batch decoding (log-mel, encoder, language detection, grouping,
  temperature fallback).

The engine also says which requests its model can serve (`check`), so that callers need not
know Whisper's language table or which models are English-only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from service.asr import decoding
from service.asr.encoding import PaddingFill
from service.asr.headroom import BUSY_MAX, WAIT_MAX_S, Headroom, Verdict
from service.asr.scheduler import Drop, Outcome, Request, RequestKind, Scheduler
from service.asr.worker import Worker, WorkerTimings
from service.metrics import FINAL_LATENCY_S, Buckets
from service.vocab import Task

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16


class AsrRequestError(ValueError):
    """A request this model cannot serve; `code` names the reason for an API error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_language(language: str | None) -> None:
    """Raise AsrRequestError unless `language` is None (detect) or a code Whisper knows;
    for callers without a model, too."""
    from whisper.tokenizer import LANGUAGES

    if language is not None and language not in LANGUAGES:
        raise AsrRequestError(
            "unsupported_language",
            f"unknown language {language!r}: use an ISO 639-1 code Whisper knows",
        )


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"IM_DEVICE={requested} but torch sees no CUDA device")
    return requested


class AsrEngine:
    """Construct on the hub's thread, `load` once (from a greenlet), then `submit` from any
    greenlet; `close` once."""

    def __init__(
        self,
        model_name: str,
        model_dir,
        device: str = "auto",
        max_batch: int = 0,  # 0: auto, see _load
        sequential: bool = False,
        compute_type: str = "auto",  # IM_COMPUTE_TYPE, see service/asr/precision.py
        download_base: str | None = None,  # IM_MODEL_DOWNLOAD_BASE
        admit_wait_s: float = WAIT_MAX_S,  # IM_ASR_ADMIT_WAIT_S, see service/asr/headroom.py
        admit_busy: float = BUSY_MAX,  # IM_ASR_ADMIT_BUSY
        short_context: bool = False,  # IM_ASR_SHORT_CONTEXT, on a CPU (service/asr/encoding.py)
    ) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.requested_device = device
        self.requested_compute_type = compute_type
        self.compute_type: str | None = None
        self.download_base = download_base
        self.requested_short_context = short_context
        self._fill: PaddingFill | None = None
        self.max_batch = 1 if sequential else max_batch
        self.device: str | None = None
        self.model: Any = None  # a whisper.model.Whisper once loaded
        self.multilingual = False
        self._scheduler = Scheduler()
        self._worker = Worker(
            self._scheduler,
            self.decode_batch,
            lambda: self.max_batch,
            Headroom(busy_max=admit_busy, wait_max_s=admit_wait_s),
        )
        self._closed = False
        self._started_at = time.monotonic()
        # End of speech to final committed, of every stream (observed by stream.py).
        self.final_latency = Buckets(FINAL_LATENCY_S)

    # -- life cycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm the model on the worker thread; the calling greenlet waits, the
        hub does not."""
        started = time.monotonic()
        self._worker.start(self._load)
        log.info(
            "model %s loaded on %s as %s in %.1f s (max batch %d)",
            self.model_name,
            self.device,
            self.compute_type,
            time.monotonic() - started,
            self.max_batch,
        )

    def _load(self) -> None:
        import torch

        from service.asr import catalogue, memory, precision, weights

        self.device = pick_device(self.requested_device)
        self.compute_type = precision.resolve(self.requested_compute_type, self.device)
        if self.max_batch == 0:
            # Auto: a GPU decodes a batch in about the time of one item, a CPU in the time
            # of all of them, and a batch's items all finish when the last does: on a CPU
            # batching only delays finals, at the same throughput (docs/benchmarks.md).
            # So batches on CUDA, one at a time on a CPU.
            self.max_batch = DEFAULT_MAX_BATCH if self.device.startswith("cuda") else 1
        if self.device == "cpu":
            # Leave a core to the hub (audio, VAD, sockets): intra-op threads that compete
            # with it stall on their barriers, and decodes get slower (docs/benchmarks.md).
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        # Before any download: a model that cannot fit is refused with both figures now,
        # not with an out-of-memory error in the middle of a call.
        fetch = {"download_base": self.download_base or catalogue.DOWNLOAD_BASE}
        dims = weights.model_dims(self.model_name, self.model_dir, **fetch)
        memory.check(
            self.model_name,
            dims,
            self.compute_type,
            self.device,
            self.max_batch,
            fills=self.requested_short_context,
        )
        self.model = weights.load_model(
            self.model_name, self.model_dir, self.device, self.compute_type, **fetch
        )
        self.multilingual = bool(self.model.is_multilingual)
        # A GPU encodes a whole window in a few ms, batched: only a CPU gains from a shorter
        # one. Off by default: it costs whispered speech accuracy (docs/benchmarks.md).
        if self.requested_short_context and self.device == "cpu":
            self._fill = PaddingFill(self.model)
        # The first decodes pay one-off costs (allocations, kernel selection, lazy imports):
        # pay them now, through the same batched path, at one and at several items.
        # On a CPU a batch costs in proportion to its size, so two items warm every path.
        quiet = np.zeros(16_000 * 2, dtype=np.float32)
        cuda = self.device.startswith("cuda")
        sizes = {1, self.max_batch} if cuda else {1, min(2, self.max_batch)}
        for n in sorted(sizes):
            reqs = [
                Request(
                    RequestKind.FINAL,
                    quiet,
                    None if self.multilingual else "en",
                    Task.TRANSCRIBE,
                    _noop,
                )
                for _ in range(n)
            ]
            self.decode_batch(reqs)
        decoding.stop_when(self.model, lambda: self._scheduler.preempt)
        self.reset_stats()

    @property
    def loaded(self) -> bool:
        return self._worker.running

    @property
    def fp16(self) -> bool:
        return self.compute_type == "float16"

    @property
    def pending(self) -> int:
        return self._scheduler.pending

    @property
    def saturated(self) -> bool:
        return self._scheduler.saturated

    @property
    def stats(self) -> dict[str, float]:
        """Counters since load (or the last `reset_stats`), by name: what was decoded
        (worker) and what the policy refused or dropped (scheduler)."""
        return {**self._worker.stats.flat(), **asdict(self._scheduler.stats)}

    @property
    def timings(self) -> WorkerTimings:
        """Queue waits, batch decode times and sizes (GET /metrics)."""
        return self._worker.timings

    def headroom(self) -> Verdict:
        """Whether another transcribing call fits (service/asr/headroom.py)."""
        return self._worker.headroom.verdict()

    def utilisation(self) -> float:
        """Share of wall time since start (or the last reset) the worker spent decoding."""
        busy = self._worker.stats.busy_s
        busy_since = self._scheduler.busy_since
        if busy_since is not None:
            busy += time.monotonic() - busy_since
        return busy / max(1e-9, time.monotonic() - self._started_at)

    def reset_stats(self) -> None:
        self._worker.stats.reset()
        self._worker.timings.reset()
        self._worker.headroom.reset()
        self.final_latency.reset()
        self._scheduler.stats.reset()
        self._started_at = time.monotonic()

    def close(self) -> None:
        self._closed = True
        self._worker.close()

    # -- requests -----------------------------------------------------------------------

    def check(self, language: str | None, task: str, transcribe: bool = True) -> None:
        """Raise AsrRequestError when this model cannot serve a call asking for `language`
        (None: detect) and `task`. `transcribe`: whether the call transcribes at all (an
        English-only model refuses a translation either way)."""
        check_language(language)
        if transcribe and language not in (None, "en") and not self.multilingual:
            raise AsrRequestError(
                "unsupported_language",
                f"model {self.model_name} is English-only; "
                f"language {language!r} needs a multilingual model (IM_MODEL=base)",
            )
        if task == Task.TRANSLATE and not self.multilingual:
            raise AsrRequestError(
                "unsupported_task",
                f"model {self.model_name} is English-only and cannot translate; "
                "use a multilingual model (IM_MODEL=base)",
            )

    def submit(self, request: Request) -> bool:
        """Queue a request; False when it cannot be taken (no model, or refused by the
        scheduler: see service/asr/scheduler.py). Its `on_done` runs on the hub."""
        if self._closed or not self.loaded:
            return False
        if not self._scheduler.submit(request):
            return False
        self._worker.wake()
        return True

    def cancel(self, request: Request) -> bool:
        """Take back one queued request without an answer; False when it is already being
        decoded or answered (its outcome still comes; a decode of nothing else still
        wanted is stopped, see Scheduler.cancel)."""
        return self._scheduler.cancel(request)

    def deliver(self, on_done: Callable[[Outcome], None], outcome: Outcome) -> None:
        """Run `on_done(outcome)` on the hub in order with the decodes' answers: for an
        outcome a stream already holds, so that its finals are still answered one at a
        time by the one greenlet that answers them all."""
        self._worker.deliver(on_done, outcome)

    def forget(self, stream: Any) -> None:
        """``stream`` has ended: its finals no longer count in ``headroom``."""
        self._worker.headroom.forget(id(stream))

    def withdraw(self, stream: Any) -> int:
        """Answer ``stream``'s queued requests as withdrawn, now (on the hub), without
        decoding them; how many finals that was."""
        taken = self._scheduler.withdraw(stream)
        for r in taken:
            r.on_done(Outcome(dropped=Drop.WITHDRAWN))
        return sum(1 for r in taken if r.kind == RequestKind.FINAL)

    def decode_batch(self, batch: list[Request]) -> list[Outcome]:
        """Decode now, on the calling thread (the worker's, or a test's)."""
        assert self.model is not None and self.device is not None
        return decoding.decode_batch(
            self.model, batch, self.device, self.fp16, self.multilingual, self._fill
        )

    @property
    def short_context(self) -> bool:
        """Whether short audio is encoded over its own length (service/asr/encoding.py)."""
        return self._fill is not None


def _noop(_: Outcome) -> None:
    pass
