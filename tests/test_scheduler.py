"""The ASR queue's policy (service/asr/scheduler.py) on a simulated clock, with no model:
finals first, superseded, stale, declined and preempted partials, a full queue, the batch
size cap, requests taken back, and every drop counted."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import gevent
import numpy as np
import pytest

from service.asr.scheduler import (
    PARTIAL_STALE_S,
    SATURATED_S,
    Drop,
    Outcome,
    Preempted,
    Request,
    RequestKind,
    Scheduler,
    SchedulerStats,
)
from service.asr.worker import Worker
from service.vocab import Task

AUDIO = np.zeros(16_000, dtype=np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Answers:
    """Every on_done call, by request label."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Outcome]] = []

    def request(self, kind: RequestKind, stream: object, label: str) -> Request:
        return Request(
            kind,
            AUDIO,
            "en",
            Task.TRANSCRIBE,
            lambda o: self.got.append((label, o)),
            stream=stream,
            label=label,
        )

    def final(self, stream: object, label: str) -> Request:
        return self.request(RequestKind.FINAL, stream, label)

    def partial(self, stream: object, label: str) -> Request:
        return self.request(RequestKind.PARTIAL, stream, label)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sched(clock: Clock) -> Scheduler:
    return Scheduler(clock=clock)


def labels(requests: list[Request]) -> list[str]:
    return [r.label for r in requests]


def test_finals_go_before_partials_that_were_queued_earlier(sched: Scheduler) -> None:
    a = Answers()
    assert sched.submit(a.partial("s1", "p1"))
    assert sched.submit(a.final("s2", "f1"))
    assert sched.submit(a.final("s3", "f2"))
    batch, stale = sched.take(1)
    assert labels(batch) == ["f1"] and stale == []
    sched.finished()
    assert labels(sched.take(1)[0]) == ["f2"]
    sched.finished()
    assert labels(sched.take(1)[0]) == ["p1"]


def test_a_newer_partial_supersedes_the_queued_one_of_its_stream(sched: Scheduler) -> None:
    a = Answers()
    assert sched.submit(a.partial("s1", "old"))
    assert sched.submit(a.partial("s2", "other"))
    assert sched.submit(a.partial("s1", "new"))
    # The replaced one is answered at once, on the submitting side, with nothing to show.
    assert [label for label, _ in a.got] == ["old"]
    old = a.got[0][1]
    assert old.dropped == Drop.SUPERSEDED and old.text is None
    assert sched.stats.partials_superseded == 1
    assert sorted(labels(sched.take(16)[0])) == ["new", "other"]


def test_a_final_supersedes_its_streams_queued_partial(sched: Scheduler) -> None:
    a = Answers()
    assert sched.submit(a.partial("s1", "p"))
    assert sched.submit(a.final("s1", "f"))
    assert [(label, o.dropped) for label, o in a.got] == [("p", Drop.SUPERSEDED)]
    assert sched.stats.partials_superseded == 1
    assert labels(sched.take(16)[0]) == ["f"]


def test_a_partial_that_waited_too_long_is_dropped_not_decoded(
    sched: Scheduler, clock: Clock
) -> None:
    a = Answers()
    assert sched.submit(a.partial("s1", "late"))
    clock.advance(PARTIAL_STALE_S - 0.1)
    assert sched.submit(a.partial("s2", "fresh"))
    clock.advance(0.2)  # "late" has now waited longer than PARTIAL_STALE_S, "fresh" not
    batch, stale = sched.take(16)
    assert labels(batch) == ["fresh"]
    assert labels(stale) == ["late"]
    assert sched.stats.partials_stale == 1
    assert sched.pending == 1  # "fresh", being decoded; "late" is gone


def test_no_partial_is_taken_while_finals_wait(sched: Scheduler) -> None:
    a = Answers()
    assert sched.submit(a.final("s1", "f"))
    assert not sched.submit(a.partial("s2", "p"))
    assert sched.stats.partials_skipped_busy == 1
    assert a.got == []  # declined, not answered: the caller knows from the False
    assert labels(sched.take(16)[0]) == ["f"]


def test_no_partial_is_taken_when_the_worker_was_not_idle_for_a_while(
    sched: Scheduler, clock: Clock
) -> None:
    a = Answers()
    clock.advance(10 * SATURATED_S)
    assert sched.take(16) == ([], [])  # the worker found nothing: idle now
    assert sched.submit(a.final("s1", "f"))
    assert labels(sched.take(16)[0]) == ["f"]  # and busy from now on
    clock.advance(SATURATED_S - 0.1)
    assert sched.submit(a.partial("s2", "p1"))  # busy, but idle not long ago
    assert sched.stats.partials_skipped_busy == 0
    clock.advance(0.2)
    assert not sched.submit(a.partial("s3", "p2"))  # busy for longer than SATURATED_S
    assert sched.stats.partials_skipped_busy == 1
    sched.finished()
    assert sched.submit(a.partial("s3", "p3"))  # the worker is free again


def test_a_full_queue_refuses_finals_and_counts_them(clock: Clock) -> None:
    sched = Scheduler(clock=clock, max_finals=3)
    a = Answers()
    assert sched.submit(a.partial("s9", "p"))
    for i in range(3):
        assert sched.submit(a.final(f"s{i}", f"f{i}"))
    assert not sched.submit(a.final("s9", "refused"))
    assert sched.stats.rejected_queue_full == 1
    assert a.got == []  # nor did the refused final supersede its stream's partial
    assert sched.pending == 4
    assert labels(sched.take(1)[0]) == ["f0"]
    sched.finished()
    assert sched.submit(a.final("s9", "room again"))
    assert sched.stats.rejected_queue_full == 1


def test_a_batch_holds_at_most_the_limit_finals_first_then_the_longest_waiting_partials(
    sched: Scheduler, clock: Clock
) -> None:
    a = Answers()
    for i in range(3):
        assert sched.submit(a.partial(f"p{i}", f"p{i}"))
        clock.advance(0.1)
    for i in range(3):
        assert sched.submit(a.final(f"f{i}", f"f{i}"))
    assert labels(sched.take(2)[0]) == ["f0", "f1"]
    sched.finished()
    assert labels(sched.take(3)[0]) == ["f2", "p0", "p1"]
    sched.finished()
    assert labels(sched.take(3)[0]) == ["p2"]
    sched.finished()
    assert sched.take(3) == ([], [])
    assert sched.pending == 0


def test_stats_count_each_drop_and_reset(sched: Scheduler, clock: Clock) -> None:
    a = Answers()
    sched.submit(a.partial("s1", "superseded"))
    sched.submit(a.partial("s1", "stale"))
    clock.advance(PARTIAL_STALE_S + 0.1)
    sched.take(16)
    sched.submit(a.final("s2", "f"))
    sched.submit(a.partial("s3", "declined"))
    assert sched.stats == SchedulerStats(
        rejected_queue_full=0, partials_superseded=1, partials_skipped_busy=1, partials_stale=1
    )
    sched.stats.reset()
    assert sched.stats == SchedulerStats()


def test_a_request_of_an_unknown_kind_or_task_is_refused_when_made() -> None:
    with pytest.raises(ValueError):
        Request("urgent", AUDIO, "en", Task.TRANSCRIBE, print)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Request(RequestKind.FINAL, AUDIO, "en", "summarise", print)  # type: ignore[arg-type]


@pytest.mark.slow  # starts a process or loads a model
def test_the_scheduler_needs_no_model() -> None:
    code = (
        "import sys, service.asr.scheduler; "
        "print([m for m in ('torch', 'whisper') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_worker_answers_every_request_on_the_hub_even_when_a_batch_fails() -> None:
    """The worker thread with the real scheduler and a decoder that fails its first batch."""
    sched = Scheduler()
    calls: list[int] = []

    def decode(batch: list[Request]) -> list[Outcome]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return [Outcome() for _ in batch]

    a = Answers()
    for i in range(3):  # queued before the thread starts: its batches are deterministic
        assert sched.submit(a.final(f"s{i}", f"f{i}"))
    worker = Worker(sched, decode, lambda: 2)
    worker.start(lambda: None)
    try:
        with gevent.Timeout(10):
            while len(a.got) < 3:
                gevent.sleep(0.01)
        assert calls == [2, 1]  # at most max_batch per batch
        assert [label for label, _ in a.got] == ["f0", "f1", "f2"]
        assert [o.dropped for _, o in a.got] == [Drop.ERROR, Drop.ERROR, None]
        assert "out of memory" in (a.got[0][1].error or "")
        assert worker.stats.errors == 2 and worker.stats.finals == 3
        assert worker.stats.batches == 2
    finally:
        worker.close()


def test_the_engine_refuses_what_its_model_cannot_do(tmp_path: Path) -> None:
    """AsrEngine.check, which needs no loaded model (here because it needs none either)."""
    from service.asr.engine import AsrEngine, AsrRequestError

    engine = AsrEngine("tiny.en", tmp_path)  # never loaded: English-only, as tiny.en is
    try:
        engine.check(None, Task.TRANSCRIBE)
        engine.check("en", Task.TRANSCRIBE)
        engine.check("de", Task.TRANSCRIBE, transcribe=False)  # nothing to transcribe
        refused = [
            ("xx", Task.TRANSCRIBE, "unsupported_language", "unknown language 'xx'"),
            ("de", Task.TRANSCRIBE, "unsupported_language", "tiny.en is English-only"),
            (None, Task.TRANSLATE, "unsupported_task", "cannot translate"),
        ]
        for language, task, code, words in refused:
            with pytest.raises(AsrRequestError) as e:
                engine.check(language, task)
            assert e.value.code == code and words in e.value.message
        engine.multilingual = True
        engine.check("de", Task.TRANSLATE)
        with pytest.raises(AsrRequestError):
            engine.check("xx", Task.TRANSCRIBE)  # unknown to every model
    finally:
        engine.close()


def test_a_final_stops_a_decode_of_partials_only_and_goes_next(sched: Scheduler) -> None:
    """A partial takes about as long as a final: a final that came while one is decoded
    would otherwise wait that long for a preview nobody needs any more."""
    a = Answers()
    assert sched.submit(a.partial("s1", "p"))
    assert labels(sched.take(1)[0]) == ["p"]
    assert not sched.preempt
    assert sched.submit(a.final("s2", "f"))
    assert sched.preempt  # the worker's decode sees this and stops
    sched.finished()
    assert not sched.preempt
    assert labels(sched.take(1)[0]) == ["f"]
    # A final is never stopped: another final waits its turn.
    assert sched.submit(a.final("s3", "g"))
    assert not sched.preempt


def test_a_batch_with_a_final_in_it_is_not_stopped(sched: Scheduler) -> None:
    a = Answers()
    assert sched.submit(a.partial("s2", "p"))  # (no partial is taken while finals wait)
    assert sched.submit(a.final("s1", "f"))
    assert labels(sched.take(2)[0]) == ["f", "p"]
    assert sched.submit(a.final("s3", "g"))
    assert not sched.preempt


def test_a_queued_request_can_be_taken_back_once(sched: Scheduler) -> None:
    a = Answers()
    f, p = a.final("s1", "f"), a.partial("s2", "p")
    assert sched.submit(p) and sched.submit(f)
    assert sched.cancel(f) and not sched.cancel(f)
    assert sched.cancel(p)
    assert sched.take(4)[0] == [] and a.got == []  # never decoded, never answered
    g = a.final("s1", "g")
    assert sched.submit(g)
    assert sched.take(1)[0] == [g]
    assert not sched.cancel(g)  # being decoded: its outcome still comes


def test_the_worker_answers_a_stopped_decode_of_partials_as_preempted() -> None:
    """The worker thread with the real scheduler and a decoder that, like the model's
    hooks (decoding.stop_when), stops once the scheduler asks it to."""
    sched = Scheduler()
    decoding_partial = threading.Event()

    def decode(batch: list[Request]) -> list[Outcome]:
        if batch[0].kind == RequestKind.PARTIAL:
            decoding_partial.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if sched.preempt:
                    raise Preempted
                time.sleep(0.001)
        return [Outcome() for _ in batch]

    a = Answers()
    worker = Worker(sched, decode, lambda: 1)
    worker.start(lambda: None)
    try:
        assert sched.submit(a.partial("s1", "p"))
        worker.wake()
        with gevent.Timeout(10):
            while not decoding_partial.is_set():
                gevent.sleep(0.005)
            assert sched.submit(a.final("s1", "f"))
            worker.wake()
            while len(a.got) < 2:
                gevent.sleep(0.005)
        assert [(label, o.dropped) for label, o in a.got] == [
            ("p", Drop.PREEMPTED),
            ("f", None),
        ]
        assert sched.stats.partials_preempted == 1
        assert worker.stats.finals == 1 and worker.stats.partials_filtered == 0
    finally:
        worker.close()


def test_taking_back_what_is_being_decoded_stops_it_unless_a_final_is_wanted(
    sched: Scheduler,
) -> None:
    """An early final whose utterance went on (service/asr/stream.py) is not worth
    finishing; one decoded beside a final that is still wanted is."""
    a = Answers()
    early = a.final("s1", "early")
    assert sched.submit(early)
    assert labels(sched.take(1)[0]) == ["early"]
    assert not sched.cancel(early)  # its outcome still comes ...
    assert sched.preempt  # ... soon: the decode stops
    sched.finished()
    wanted, early = a.final("s2", "wanted"), a.final("s1", "early2")
    assert sched.submit(wanted) and sched.submit(early)
    assert labels(sched.take(2)[0]) == ["wanted", "early2"]
    assert not sched.cancel(early)
    assert not sched.preempt
