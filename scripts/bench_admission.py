"""Capacity-aware admission benchmark (not a test): does refusing the call that does not fit
keep the running calls' captions on time?

Simulated calls (the very StreamTranscriber a call uses, on the real engine and model) each
stream the English dev clips in real time, one after another, for the whole run. A new call
is offered every --stagger-s seconds; before it starts, the engine's headroom is asked, as
the node asks it for POST /sessions (service/asr/headroom.py). With admission, the first
refusal ends the arrivals; with --no-admission, every offered call starts anyway.

Printed: when each call was offered and what the headroom said; then the running calls'
final-caption latency (end of speech to final, p50/p95) in the window before the first
refusal and after it. The issue's bound: p95 after within 20 % of p95 before.

    scripts/bench_admission                     # tiny.en, a call every 30 s, up to 8
    scripts/bench_admission --no-admission      # what the refused call would have cost
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import gevent
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_asr import DEFAULT_MANIFEST, SimCall, attach_stream, layout, load_clips, pct  # noqa: E402

from service.asr.engine import AsrEngine  # noqa: E402
from service.asr.headroom import BUSY_MAX, WAIT_MAX_S  # noqa: E402
from service.asr.segmenter import SegmenterConfig  # noqa: E402
from service.frames import FRAME_SAMPLES, SAMPLE_RATE  # noqa: E402


def talk(call: SimCall, until: float) -> None:
    """Feed the call's clips, looped, in real time until `until` (monotonic)."""
    assert call.stream is not None
    total = call.placed[-1].end_s + 1.0
    pcm = np.zeros(round(total * SAMPLE_RATE), dtype=np.int16)
    for p in call.placed:
        at = round(p.start_s * SAMPLE_RATE)
        pcm[at : at + p.clip.pcm.size] = p.clip.pcm
    frames = pcm.size // FRAME_SAMPLES
    call.started = t0 = time.monotonic()
    i = 0
    while time.monotonic() < until:
        k = i % frames
        call.stream.push(pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])
        i += 1
        delay = t0 + i * FRAME_SAMPLES / SAMPLE_RATE - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
    call.stream.flush()


def latencies(calls: list[SimCall], since: float, until: float) -> list[float]:
    """End of speech to final of the finals that arrived in [since, until)."""
    return [
        at - (c.started + c.speech_end_s[no])  # stream seconds: the loop is one long stream
        for c in calls
        for no, at in c.final_at.items()
        if since <= at < until
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "data/models")
    ap.add_argument("--stagger-s", type=float, default=30.0, help="a new call every N s")
    ap.add_argument("--max-calls", type=int, default=8)
    ap.add_argument("--after-s", type=float, default=60.0, help="run on after the refusal")
    ap.add_argument("--no-admission", action="store_true", help="start every offered call")
    ap.add_argument("--wait-s", type=float, default=WAIT_MAX_S, help="IM_ASR_ADMIT_WAIT_S")
    ap.add_argument("--busy", type=float, default=BUSY_MAX, help="IM_ASR_ADMIT_BUSY")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    clips = load_clips(args.manifest, ["en"], None, max_clip_s=12.0)
    engine = AsrEngine(args.model, args.model_dir, admit_wait_s=args.wait_s, admit_busy=args.busy)
    engine.load()
    config = SegmenterConfig()
    print(
        f"{args.model}, a call every {args.stagger_s:g} s, admission "
        f"{'off' if args.no_admission else f'on (wait {args.wait_s:g} s, busy {args.busy:g})'}"
    )
    calls: list[SimCall] = []
    talkers: list[gevent.Greenlet] = []
    refused_at: float | None = None
    horizon = time.monotonic() + args.stagger_s * (args.max_calls + 1) + args.after_s
    start = time.monotonic()
    for k in range(args.max_calls + 1):
        verdict = engine.headroom()
        t = time.monotonic() - start
        state = (
            f"finals busy {verdict.finals_busy:.0%} of {verdict.streams} streams, "
            f"{verdict.projected_busy:.0%} with one more, median wait "
            f"{'-' if verdict.finals_wait_s is None else f'{verdict.finals_wait_s:.2f} s'}"
        )
        if verdict.saturated and refused_at is None:
            refused_at = time.monotonic()
            print(f"[{t:5.0f} s] call {k + 1} offered: REFUSED ({state})")
            if not args.no_admission:
                break
        else:
            what = "started" if k < args.max_calls else "not started (max)"
            print(f"[{t:5.0f} s] call {k + 1} offered: {what} ({state})")
        if k == args.max_calls:
            break
        call = SimCall(k, layout(clips, k * 7, None))
        attach_stream(call, engine, config, f"sim call {call.index}")
        calls.append(call)
        talkers.append(gevent.spawn(talk, call, horizon))
        gevent.sleep(args.stagger_s)
    pivot = refused_at or time.monotonic()
    gevent.sleep(args.after_s)
    end = time.monotonic()
    for g in talkers:
        g.kill()
    before = latencies(calls, pivot - args.stagger_s, pivot)
    after = latencies(calls, pivot, end)
    print(f"running calls: {len(calls)}")
    for name, values in (("before the refusal", before), ("after it", after)):
        print(
            f"  final latency {name:18s}: n {len(values):3d}, p50 {pct(values, 50):5.2f} s, "
            f"p95 {pct(values, 95):5.2f} s"
        )
    if before and after:
        print(f"  p95 after / before: {pct(after, 95) / pct(before, 95):.2f} (bound 1.20)")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
