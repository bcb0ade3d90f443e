"""The ASR worker's headroom (service/asr/headroom.py), on an injected clock: when another
transcribing call would only make every call's captions later."""

from __future__ import annotations

from service.asr.headroom import Headroom


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_partials_alone_leave_headroom_however_busy_the_worker_is() -> None:
    clock = Clock()
    room = Headroom(window_s=20, busy_max=0.8, wait_max_s=2, clock=clock)
    for _ in range(40):  # a worker decoding partials back to back
        clock.now += 0.5
        room.observe(0.5, 1, [])
    verdict = room.verdict()
    assert not verdict.saturated and verdict.finals_busy == 0.0 and verdict.finals_wait_s is None


def test_finals_filling_the_worker_saturate_it_even_before_they_queue() -> None:
    clock = Clock()
    room = Headroom(window_s=20, busy_max=0.8, wait_max_s=2, clock=clock)
    for _ in range(18):  # 18 s of finals in 20 s, none of which waited
        clock.now += 1.0
        room.observe(1.0, 1, [0.0])
    verdict = room.verdict()
    assert verdict.saturated and verdict.finals_busy == 0.9
    assert "90% busy" in (verdict.reason or "")


def test_finals_waiting_long_saturate_it_and_the_verdict_forgets_them_after_the_window() -> None:
    clock = Clock()
    room = Headroom(window_s=20, busy_max=0.8, wait_max_s=2, clock=clock)
    for wait in (3.0, 4.0, 5.0):
        clock.now += 1.0
        room.observe(0.5, 1, [wait])
    verdict = room.verdict()
    assert verdict.saturated and verdict.finals_wait_s == 4.0 and verdict.finals_busy == 0.075
    assert "wait 4.0 s" in (verdict.reason or "")
    clock.now += 21.0
    assert not room.verdict().saturated


def test_a_batch_shares_its_time_among_its_items() -> None:
    clock = Clock()
    room = Headroom(window_s=10, busy_max=0.5, wait_max_s=100, clock=clock)
    clock.now += 1
    room.observe(8.0, 4, [0.1])  # one final among four items: 2 s of the batch is its
    assert room.verdict().finals_busy == 0.2
    room.observe(1.0, 0, [])  # an empty batch counts for nothing (and does not divide by 0)
    assert room.verdict().finals_busy == 0.2


def test_the_call_that_would_fill_the_worker_is_refused_before_it_does() -> None:
    # Three streams' finals kept the worker 69 % busy: under the 80 % bound, but a fourth
    # stream like them would take it to 92 % (scripts/bench_admission measured a fourth
    # call there growing every call's p95 by 27 % a minute).
    clock = Clock()
    room = Headroom(window_s=20, busy_max=0.8, wait_max_s=2, clock=clock)
    for i in range(23):
        clock.now += 0.6
        room.observe(0.6, 1, [0.1], [f"call {i % 3}"])
    verdict = room.verdict()
    assert verdict.finals_busy == 0.69 and verdict.streams == 3
    assert verdict.projected_busy == 0.92 and verdict.saturated
    assert "about 92% with one more" in (verdict.reason or "")
    # Two such streams leave room for a third: 46 % now, 69 % with it.
    room.reset()
    for i in range(23):
        clock.now += 0.6
        room.observe(0.4, 1, [0.1], [f"call {i % 2}"])
    verdict = room.verdict()
    assert verdict.streams == 2 and not verdict.saturated, verdict


def test_a_stream_that_ended_is_no_load_for_the_next_call() -> None:
    # A busy call hangs up: its finals filled the last 20 s, and the next call was refused
    # for that whole window (tests/test_call.py saw it: 80 % busy, "about 100 % with one
    # more", right after its calls had ended). Forgotten, only the others count.
    clock = Clock()
    room = Headroom(window_s=20, busy_max=0.8, wait_max_s=2, clock=clock)
    for i in range(20):
        clock.now += 1.0
        room.observe(0.9, 1, [0.1], ["ended" if i % 3 else "running"])
    assert room.verdict().saturated
    room.forget("ended")
    verdict = room.verdict()
    assert verdict.streams == 1 and verdict.finals_busy == 0.315 and not verdict.saturated
