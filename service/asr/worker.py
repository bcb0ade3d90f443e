"""The one OS thread that runs the model for every call, and the hand-back of its results.

Whisper runs on a native thread (torch releases the GIL, so the hub keeps serving audio and
sockets meanwhile). The thread asks the scheduler for a batch, decodes it and puts each
request's outcome into a ``ThreadToHub``; a greenlet on the hub takes them out and calls each
request's ``on_done`` there. A request is put from a greenlet and the thread is woken through
a C ``SimpleQueue``, which blocks the thread, never the hub. The thread never touches gevent
(it does not even log: reasons travel with the outcomes and are logged on the hub).
"""

from __future__ import annotations

import _queue
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import gevent
from gevent.event import Event

from service.asr import filters
from service.asr.headroom import Headroom
from service.asr.scheduler import (
    MAX_QUEUED_FINALS,
    Drop,
    Outcome,
    Preempted,
    Request,
    RequestKind,
    Scheduler,
)
from service.metrics import BATCH_SIZE, DECODE_S, QUEUE_WAIT_S, Buckets
from service.threadhub import ThreadToHub, start_native_thread

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5  # unwoken, an idle worker still looks this often: stale partials, close()

Decode = Callable[[list[Request]], list[Outcome]]  # one outcome per request, in order
Delivery = tuple[Callable[[Outcome], None], Outcome]


@dataclass
class WorkerStats:
    """What the worker decoded, since start or the last reset."""

    finals: int = 0
    partials: int = 0
    batches: int = 0
    batch_items: int = 0
    max_batch_seen: int = 0
    busy_s: float = 0.0
    fallbacks: int = 0  # decodes retried at a higher temperature
    errors: int = 0  # requests whose batch failed
    partials_filtered: int = 0  # partials decoded and dropped (by the filters, or an error)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(filters.REASONS, 0))

    def reset(self) -> None:
        for f in fields(self):
            if f.name != "dropped":
                setattr(self, f.name, 0)
        self.dropped = dict.fromkeys(filters.REASONS, 0)

    def count(self, batch: list[Request], outcomes: list[Outcome], took: float) -> None:
        self.busy_s += took
        self.batches += 1
        self.batch_items += len(batch)
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        for r, o in zip(batch, outcomes, strict=True):
            final = r.kind == RequestKind.FINAL
            if final:
                self.finals += 1
            else:
                self.partials += 1
            self.fallbacks += o.fallbacks
            if o.dropped == Drop.ERROR:
                self.errors += 1
            if o.dropped and not final:
                self.partials_filtered += 1
            elif o.dropped and o.dropped != Drop.ERROR:
                self.dropped[o.dropped] = self.dropped.get(o.dropped, 0) + 1

    def flat(self) -> dict[str, float]:
        """By name, each filter's drops as ``dropped_<reason>``."""
        figures: dict[str, float] = {k: v for k, v in asdict(self).items() if k != "dropped"}
        figures.update({f"dropped_{reason}": n for reason, n in self.dropped.items()})
        return figures


class WorkerTimings:
    """How long requests waited and batches took, and how big batches were: the
    distributions GET /metrics shows. Added to on the worker's thread (``Buckets`` holds a
    native lock), reset with the stats."""

    def __init__(self) -> None:
        self.queue_wait = {kind: Buckets(QUEUE_WAIT_S) for kind in RequestKind}
        self.decode_s = Buckets(DECODE_S)
        self.batch_size = Buckets(BATCH_SIZE)

    def count(self, batch: list[Request], started: float, took: float) -> None:
        self.decode_s.observe(took)
        self.batch_size.observe(len(batch))
        for r in batch:
            self.queue_wait[r.kind].observe(started - r.queued_at)

    def reset(self) -> None:
        for b in (*self.queue_wait.values(), self.decode_s, self.batch_size):
            b.reset()


class Worker:
    """Create on the hub's thread; `start` once, `close` once."""

    def __init__(
        self,
        scheduler: Scheduler,
        decode: Decode,
        max_batch: Callable[[], int],
        headroom: Headroom | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._decode = decode
        self._max_batch = max_batch  # read at each take: known only once the model is loaded
        self._wake: _queue.SimpleQueue[None] = _queue.SimpleQueue()
        self._results: ThreadToHub[Delivery] = ThreadToHub(
            maxlen=MAX_QUEUED_FINALS * 4  # never reached: at most one result per request
        )
        self._deliverer: gevent.Greenlet | None = None
        self._ready = Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self.stats = WorkerStats()
        self.timings = WorkerTimings()
        # What it leaves for another call: admission of new transcribing calls.
        self.headroom = headroom or Headroom()

    @property
    def running(self) -> bool:
        """Started, and its `prepare` succeeded."""
        return self._ready.is_set() and self._start_error is None

    def start(self, prepare: Callable[[], None]) -> None:
        """Start the thread, which runs `prepare` (loading the model) and then decodes until
        `close`. The calling greenlet waits for `prepare` and raises what it raised; the
        hub does not wait."""
        self._deliverer = gevent.spawn(self._deliver)
        start_native_thread(lambda: self._main(prepare))
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    def wake(self) -> None:
        """Something was queued: safe from the hub, never blocks."""
        self._wake.put(None)

    def deliver(self, on_done: Callable[[Outcome], None], outcome: Outcome) -> None:
        """Answer `on_done` with `outcome` in turn with the decoded ones (on the hub)."""
        self._results.put_nowait((on_done, outcome))

    def close(self) -> None:
        self._closed = True
        self._wake.put(None)
        if self._deliverer is not None:
            self._deliverer.kill()
        self._results.close()

    # -- the thread ---------------------------------------------------------------------

    def _main(self, prepare: Callable[[], None]) -> None:
        try:
            prepare()
        except BaseException as e:  # reported on the hub by start()
            self._start_error = e
        self._results.put_nowait((self._on_ready, Outcome()))
        if self._start_error is None:
            self._loop()

    def _loop(self) -> None:
        while not self._closed:
            batch, stale = self._scheduler.take(self._max_batch())
            for r in stale:
                self._results.put_nowait((r.on_done, Outcome(dropped=Drop.STALE)))
            if not batch:
                with contextlib.suppress(_queue.Empty):
                    self._wake.get(timeout=IDLE_POLL_S)
                continue
            self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        started = time.monotonic()
        try:
            outcomes = self._decode(batch)
        except Preempted:  # partials or requests taken back only: a final goes next
            self._scheduler.finished()
            self.stats.busy_s += time.monotonic() - started
            self._scheduler.stats.partials_preempted += sum(
                r.kind == RequestKind.PARTIAL for r in batch
            )
            for r in batch:
                self._results.put_nowait((r.on_done, Outcome(dropped=Drop.PREEMPTED)))
            return
        except Exception as e:  # a bad batch must not kill the worker
            outcomes = [Outcome(dropped=Drop.ERROR, error=repr(e)) for _ in batch]
        took = time.monotonic() - started
        self._scheduler.finished()
        self.stats.count(batch, outcomes, took)
        self.timings.count(batch, started, took)
        finals = [r for r in batch if r.kind == RequestKind.FINAL]
        waits = [started - r.queued_at for r in finals]
        self.headroom.observe(took, len(batch), waits, [id(r.stream) for r in finals])
        for r, o in zip(batch, outcomes, strict=True):
            o.queued_s = started - r.queued_at
            o.decode_s = took
            o.batch = len(batch)
            self._results.put_nowait((r.on_done, o))

    # -- the hub ------------------------------------------------------------------------

    def _on_ready(self, _: Outcome) -> None:
        self._ready.set()

    def _deliver(self) -> None:
        while True:
            item = self._results.get()
            if item is None:
                if self._results.closed:
                    return
                continue
            callback, outcome = item
            try:
                callback(outcome)
            except Exception:
                log.exception("an ASR result callback failed")
