"""What the one ASR worker decodes next, for every call at once: the queue's whole policy.

Finals (ended utterances) are what a call keeps, so they are never dropped once queued and
always go first; the only limit is the queue's size, and a final that does not fit is
refused at once (counted, logged) instead of stretching everyone's wait. Partials (the open
utterance so far) are only a preview, so overload costs them first, and lag does not grow:

- a stream's newer partial replaces its queued one (``superseded``), and a final of the
  stream replaces it too;
- a partial that waited longer than ``PARTIAL_STALE_S`` is dropped (``stale``): shown that
  late it would describe speech the speaker has moved on from;
- while finals wait, or while the worker has not been idle once in ``SATURATED_S``, new
  partials are declined: finals alone fill the worker, and partials would only delay them;
- a final that arrives while the worker decodes partials only stops that decode
  (``preempted``, `preempt`): a partial takes about as long as a final, and the final
  would otherwise wait up to that long for a preview nobody needs once the final comes.
  So does taking back (`cancel`) the last request of a batch that is not a partial: an
  early final whose utterance went on (service/asr/stream.py) is not worth finishing.

Every drop is counted in ``stats`` and answered through the request's ``on_done``. Nothing
here knows of a model, a thread or gevent, and time comes from an injectable clock, so the
policy is tested as it is (tests/test_scheduler.py). ``submit`` runs on the hub and ``take``
on the worker thread; both hold a native lock for bookkeeping only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from service.threadhub import native_lock
from service.vocab import Segment, Task

log = logging.getLogger(__name__)

MAX_QUEUED_FINALS = 256  # utterances waiting for the model, across all calls
PARTIAL_STALE_S = 1.5  # a partial that waited longer than this is no longer worth showing
SATURATED_S = 2.0  # a worker not idle once in this long is behind: partials are declined


class RequestKind(StrEnum):
    FINAL = "final"  # an ended utterance: what the call keeps
    PARTIAL = "partial"  # an open utterance so far: a provisional preview


class Drop(StrEnum):
    """Why a request got no text, besides the filters' reasons (service/asr/filters.py)."""

    SUPERSEDED = "superseded"  # a newer request of its stream took its place in the queue
    STALE = "stale"  # a partial that waited too long
    ERROR = "error"  # its batch failed to decode
    PREEMPTED = "preempted"  # its decode was stopped: for a final, or taken back
    WITHDRAWN = "withdrawn"  # its stream ended and took it back (its call's pass has the audio)


@dataclass
class Request:
    """One decode: a final (an ended utterance) or a partial (an open one, so far)."""

    kind: RequestKind
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str | None  # None: detect
    task: Task
    on_done: Callable[[Outcome], None]  # called on the hub, exactly once
    stream: Any = None  # partials of one stream replace each other (hashable)
    label: str = ""
    queued_at: float = field(default_factory=time.monotonic)  # set again by submit()
    # The stream's committed text (never a partial's) and its language: context for the
    # decoder, as `whisper.transcribe` gives each window the text before it.
    prompt: str | None = None
    prompt_language: str | None = None
    cancelled: bool = False  # taken back while being decoded (Scheduler.cancel)

    def __post_init__(self) -> None:
        self.kind = RequestKind(self.kind)  # a bad kind or task fails here, not in the worker
        self.task = Task(self.task)


@dataclass
class Outcome:
    """What became of one request: a decoded candidate (kept, or dropped by the filters), or
    a drop before or instead of decoding. A decode outcome, not yet a segment of a call."""

    # The decoder's result: cleaned text, language, task and Whisper's figures, with times
    # within the request's audio (0 to its duration). Present for every decoded candidate,
    # kept or not (the figures say why one was dropped); None when nothing was decoded.
    decoded: Segment | None = None
    dropped: str | None = None  # a Drop or a filters reason; None: kept
    temperature: float | None = None  # of the try that was kept
    fallbacks: int = 0  # retries at higher temperatures it took
    error: str | None = None
    queued_s: float = 0.0  # waiting for the worker
    decode_s: float = 0.0  # the batch it was decoded in
    batch: int = 0

    @property
    def segment(self) -> Segment | None:
        """The decoded segment when it is kept; None when there is nothing to show."""
        return None if self.dropped else self.decoded

    @property
    def text(self) -> str | None:
        segment = self.segment
        return None if segment is None else segment.text

    @property
    def language(self) -> str | None:
        return None if self.decoded is None else self.decoded.language


@dataclass
class SchedulerStats:
    """What the policy refused or dropped, since start or the last reset."""

    rejected_queue_full: int = 0  # finals refused: the queue was full
    partials_superseded: int = 0
    partials_skipped_busy: int = 0  # declined: finals waiting, or the worker saturated
    partials_stale: int = 0
    partials_preempted: int = 0  # partials whose decode was stopped (counted by the worker)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


class Preempted(Exception):
    """Raised inside a decode the scheduler asks to stop (`Scheduler.preempt`): partials
    when a final has come, or requests all taken back."""


class Scheduler:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_finals: int = MAX_QUEUED_FINALS,
        stale_s: float = PARTIAL_STALE_S,
        saturated_s: float = SATURATED_S,
    ) -> None:
        self._clock = clock
        self.max_finals = max_finals
        self.stale_s = stale_s
        self.saturated_s = saturated_s
        self._lock = native_lock()
        self._finals: deque[Request] = deque()
        self._partials: dict[Any, Request] = {}  # the newest per stream
        self._busy_since: float | None = None  # when the worker took its current batch
        self._batch: list[Request] = []  # being decoded
        # Set on the hub when a final comes while partials only are decoded, or when what
        # is decoded has all been taken back (cancel); the worker's decode reads it between
        # layers and stops (Preempted). Reset at each take.
        self.preempt = False
        self._idle_at = clock()  # last time the worker found nothing to do
        self.stats = SchedulerStats()

    # -- hub side -----------------------------------------------------------------------

    def submit(self, request: Request) -> bool:
        """Queue a request; False when it is refused (a final: queue full; a partial: the
        worker is saturated), counted. A partial replaces the same stream's queued partial,
        and a final drops it: the replaced one is answered as superseded."""
        if request.kind == RequestKind.PARTIAL and self.saturated:
            self.stats.partials_skipped_busy += 1
            return False
        superseded = None
        with self._lock:
            full = request.kind == RequestKind.FINAL and len(self._finals) >= self.max_finals
            if not full:
                request.queued_at = self._clock()
                superseded = self._partials.pop(request.stream, None)
                if request.kind == RequestKind.FINAL:
                    self._finals.append(request)
                    if self._stoppable():
                        self.preempt = True
                else:
                    self._partials[request.stream] = request
            if full:
                self.stats.rejected_queue_full += 1
            elif superseded is not None:
                self.stats.partials_superseded += 1
        if full:
            log.warning("ASR queue full: dropped an utterance of %s", request.label)
            return False
        if superseded is not None:
            superseded.on_done(Outcome(dropped=Drop.SUPERSEDED))
        return True

    @property
    def saturated(self) -> bool:
        """Busy without a break for a while, or finals waiting: finals alone fill the
        worker, so partials would only make them later."""
        busy_since = self._busy_since
        return (
            busy_since is not None and self._clock() - self._idle_at > self.saturated_s
        ) or bool(self._finals)

    @property
    def pending(self) -> int:
        """Requests queued or being decoded (a batch counts as one)."""
        with self._lock:
            busy = 1 if self._busy_since is not None else 0
            return len(self._finals) + len(self._partials) + busy

    @property
    def busy_since(self) -> float | None:
        return self._busy_since

    def withdraw(self, stream: Any) -> list[Request]:
        """Take back every queued request of ``stream`` (not one being decoded), for the
        caller to answer: a call that ended and whose recording its post-call pass will
        transcribe frees the worker for the calls still running."""
        with self._lock:
            mine = [r for r in self._finals if r.stream is stream]
            if mine:
                self._finals = deque(r for r in self._finals if r.stream is not stream)
            partial = self._partials.pop(stream, None)
        return mine + ([partial] if partial is not None else [])

    def cancel(self, request: Request) -> bool:
        """Take back one queued request (by identity); False when it is no longer queued
        (being decoded, or answered), and its outcome still comes. When it is being decoded
        with nothing but partials and requests taken back, that decode is stopped. The
        caller answers a request taken back, or ignores its outcome."""
        with self._lock:
            for i, r in enumerate(self._finals):
                if r is request:
                    del self._finals[i]
                    return True
            if self._partials.get(request.stream) is request:
                del self._partials[request.stream]
                return True
            if any(r is request for r in self._batch):
                request.cancelled = True
                if self._stoppable():
                    self.preempt = True
        return False

    def _stoppable(self) -> bool:
        """Whether the batch being decoded holds no final still wanted (under the lock)."""
        return bool(self._batch) and all(
            r.kind == RequestKind.PARTIAL or r.cancelled for r in self._batch
        )

    # -- worker side --------------------------------------------------------------------

    def take(self, limit: int) -> tuple[list[Request], list[Request]]:
        """Up to `limit` requests to decode together: finals first, in order, then the
        longest-waiting fresh partials; and the stale partials just dropped, to be answered
        as such. An empty batch marks the worker idle, any other busy until `finished()`."""
        now = self._clock()
        with self._lock:
            batch: list[Request] = []
            while self._finals and len(batch) < limit:
                batch.append(self._finals.popleft())
            stale = [r for r in self._partials.values() if now - r.queued_at > self.stale_s]
            for r in stale:
                del self._partials[r.stream]
            self.stats.partials_stale += len(stale)
            if len(batch) < limit and self._partials:
                fresh = sorted(self._partials.values(), key=lambda r: r.queued_at)
                for r in fresh[: limit - len(batch)]:
                    del self._partials[r.stream]
                    batch.append(r)
            if batch:
                self._busy_since = now
            else:
                self._idle_at = now
            self._batch = batch
            self.preempt = False
        return batch, stale

    def finished(self) -> None:
        """The batch from the last `take` is decoded (or stopped)."""
        with self._lock:
            self._busy_since = None
            self._batch = []
            self.preempt = False
