"""Soak: N concurrent calls with speech between two node processes on loopback, for a
set time, then an account of what was lost. Run through `scripts/soak`.

Why two nodes, not more: every call then starts and ends in the same two processes, so
each node carries all N calls at once (N listening on A, N dialling from B), which is
the load a limit like IM_MAX_CALLS is about; more nodes would spread it thinner.

Each side of each call speaks: its microphone is a WAV built from real speech clips in
shuffled order with pauses between them, exactly `--minutes` long, then silence. After
that the soak waits until both nodes have transcribed everything (that wait is the ASR
backlog, printed), hangs up (half the calls from each side) and then counts:

- frames: each direction's frames sent by one node against those received by the other.
  A frame sent after the peer hung up cannot arrive, so only the direction *from* the side
  that hung up is an exact count (everything it sent precedes its bye on the same TCP
  stream); the other direction's difference is printed as "in flight at hang-up".
- segments: every final one side stored as `local` must be stored as `remote`, same
  number and text, on the other node.
- memory: each node's RSS sampled every 2 s, its peak (the kernel's high-water mark), and
  whether it is flat after warm-up (RSS at the end against RSS at a third of the run).
- errors: API 5xx answers, calls that ended or failed on their own, ERROR lines in the
  nodes' logs, and the drop counters of both nodes' GET /metrics (ASR queue full,
  untranscribed at hang-up, live-feed listeners cut off, connections turned away, audio
  frames dropped), read before the nodes stop.

With ``--final`` the soak then waits for every call's post-call pass on both nodes and
checks the transcript of record against the speech itself: each utterance of each side's
microphone input (the stretches the VAD finds in it, as the pass's own check finds them)
must be covered by a segment of some final revision (the speaker's own node, or the
peer's). An overloaded run drops utterances from the live pass on purpose (the ASR queue
fills, the hang-up drain ends), so there the drop counters are printed, not failed on.

Exit status 0 when nothing was lost and nothing went wrong, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.asr.longform import speech_in, speech_spans
from service.asr.segmenter import SegmenterConfig
from service.audio.wavfile import read_wav
from service.frames import SAMPLE_RATE
from service.localnodes import NodeError, NodeProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE_EVERY_S = 2.0
FLAT_TOLERANCE = 0.10  # RSS may wander this much after warm-up and still count as flat
# --final: an utterance counts as kept when final segments cover this share of it, within
# this shift (a file microphone starts when the call connects, a frame or so off t=0).
COVERED_SHARE = 0.5
SHIFT_S = 0.3
# The drop counters of GET /metrics (docs/operating.md#metrics) the account reports; the
# first two fail the soak.
DROP_COUNTERS = {
    "im_asr_finals_rejected_total": "utterances dropped (ASR queue full)",
    "im_calls_ended_untranscribed_total": "calls ended with utterances untranscribed",
    "im_feed_listeners_cut_off_total": "live-feed listeners cut off",
    "im_call_connections_rejected_total": "connections turned away",
    "im_capture_frames_dropped_total": "microphone frames dropped",
    "im_outgoing_frames_dropped_total": "frames dropped before sending",
    "im_playout_frames_dropped_overflow_total": "playout frames dropped (buffer full)",
    "im_link_send_stalls_total": "link send stalls",
}


def drop_counts(metrics_text: str) -> dict[str, float]:
    """The DROP_COUNTERS samples of one node's /metrics, parsed by prometheus_client."""
    found = dict.fromkeys(DROP_COUNTERS, 0.0)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return found


# -- speech inputs --------------------------------------------------------------------------


def speech_clips(speech_dir: Path | None, max_s: float = 12.0) -> list[Path]:
    """English clips of the evaluation set (short ones: a call is turns, not a lecture),
    or the repo's own clip when the set is not there."""
    if speech_dir is not None and (speech_dir / "manifest.tsv").is_file():
        with open(speech_dir / "manifest.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        clips = [
            speech_dir / r["file"]
            for r in rows
            if r["language"] == "en" and float(r["duration_s"]) <= max_s
        ]
        if clips:
            return clips
    return [HERE / "data" / "en_jfk_inaugural_1961.wav"]


def build_input(clips: list[np.ndarray], seconds: float, seed: int, out: Path) -> Path:
    """Clips in a shuffled order with 1-3 s pauses, cut to exactly `seconds`."""
    rng = random.Random(seed)
    total = int(seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0, 2) * SAMPLE_RATE), np.int16)]
    have = parts[0].size
    while have < total:
        order = list(range(len(clips)))
        rng.shuffle(order)
        for i in order:
            pause = np.zeros(int(rng.uniform(1.0, 3.0) * SAMPLE_RATE), np.int16)
            parts += [clips[i], pause]
            have += clips[i].size + pause.size
            if have >= total:
                break
    pcm = np.concatenate(parts)[:total]
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return out


def side_spans(
    views: dict[tuple[str, str], list[dict[str, Any]]], speaker: str, peer: str, rev: str
) -> list[tuple[float, float]]:
    """(start, end) of one side's segments in revision ``rev`` on both nodes: the
    speaker's node has them as ``local``, the peer's as ``remote``."""
    own = [s for s in views[(speaker, rev)] if s["speaker"] == "local"]
    heard = [s for s in views[(peer, rev)] if s["speaker"] == "remote"]
    return [(s["start"], s["end"]) for s in own + heard]


def covered(a: float, b: float, segments: list[tuple[float, float]]) -> bool:
    """Whether segments cover COVERED_SHARE of the utterance a..b, within SHIFT_S."""
    need = COVERED_SHARE * (b - a)
    return any(speech_in(a + d, b + d, segments) >= need for d in (-SHIFT_S, 0.0, SHIFT_S))


# -- bookkeeping ----------------------------------------------------------------------------


@dataclass
class Call:
    index: int
    a_id: str = ""  # A listens
    b_id: str = ""  # B dials
    hung_up_by: str = ""  # "A" or "B"
    a_input: Path | None = None  # what A's microphone played
    b_input: Path | None = None


@dataclass
class Observed:
    http_5xx: int = 0
    api_timeouts: int = 0
    http_errors: list[str] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    asr_pending_peak: dict[str, int] = field(default_factory=dict)
    early_ends: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.seen = Observed()
        self.lock = threading.Lock()
        models = (REPO / "data" / "models").resolve()
        env = {
            "IM_MAX_CALLS": str(max(32, args.calls)),
            # A soak overloads the node on purpose, so admission (asr/headroom.py), which
            # would turn the later calls away, is off (scripts/bench_admission measures it).
            "IM_ASR_ADMIT_BUSY": "1",
            "IM_ASR_ADMIT_WAIT_S": "inf",
        }
        self.a = NodeProcess("A", work / "a", env=env, model_dir=models)
        self.b = NodeProcess("B", work / "b", env=env, model_dir=models)
        self.nodes = {"A": self.a, "B": self.b}
        self.calls = [Call(i) for i in range(args.calls)]

    def request(
        self, node: NodeProcess, method: str, path: str, tolerant: bool = False, **kw: Any
    ) -> Any:
        """One API call; 5xx answers are counted. `tolerant`: a timeout is counted and
        answered with None (a monitoring read may be late, but the soak goes on)."""
        try:
            r = node.request(method, path, **kw)
        except requests.Timeout:
            with self.lock:
                self.seen.api_timeouts += 1
            if tolerant:
                return None
            raise
        if r.status_code >= 500:
            with self.lock:
                self.seen.http_5xx += 1
                self.seen.http_errors.append(f"{node.name} {method} {path}: {r.status_code}")
        if r.status_code >= 400:
            raise NodeError(f"{node.name}: {method} {path} -> {r.status_code} {r.text}")
        return r.json()

    # -- phases -------------------------------------------------------------------------

    def start(self) -> None:
        args = self.args
        inputs = self.work / "inputs"
        inputs.mkdir()
        seconds = args.minutes * 60
        clips = [read_wav(p) for p in speech_clips(args.speech_dir)]
        # A few distinct inputs, shared by the calls (each node reads each file itself).
        variants = [
            build_input(clips, seconds, seed, inputs / f"speech-{seed}.wav")
            for seed in range(min(4, 2 * args.calls))
        ]
        print(
            f"{args.calls} calls, {args.minutes:g} min of speech per side "
            f"({len(clips)} clips, {len(variants)} input variants), "
            f"transcription {'off' if args.no_transcribe else 'on'}; data in {self.work}"
        )
        self.a.start()
        self.b.start()
        print(f"nodes up: A pid {self.a.pid} ({self.a.url}), B pid {self.b.pid} ({self.b.url})")
        transcribe = not args.no_transcribe
        for call in self.calls:
            a_in = variants[(2 * call.index) % len(variants)]
            b_in = variants[(2 * call.index + 1) % len(variants)]
            listen = self.request(
                self.a,
                "POST",
                "/sessions",
                json={
                    "mode": "listen",
                    "port": 0,
                    "input": self.a.media(a_in),
                    "output": None,
                    "transcribe": transcribe,
                },
            )
            dial = self.request(
                self.b,
                "POST",
                "/sessions",
                json={
                    "mode": "dial",
                    "peer": listen["address"],
                    "token": listen["token"],
                    "input": self.b.media(b_in),
                    "output": None,
                    "transcribe": transcribe,
                },
            )
            call.a_id, call.b_id = listen["id"], dial["id"]
            call.a_input, call.b_input = a_in, b_in
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = self.states()
            if all(s == "connected" for s in states.values()):
                break
            time.sleep(0.2)
        else:
            raise NodeError(f"not every call connected: {states}")
        print(f"{len(self.calls)} calls connected")

    def states(self) -> dict[str, str]:
        out = {}
        for name, node in self.nodes.items():
            listing = self.request(node, "GET", "/sessions", tolerant=True, timeout=20)
            for s in listing["sessions"] if listing else []:
                out[f"{name}:{s['id']}"] = s["state"]
            if listing is None:
                out[f"{name}:?"] = "no answer"
        return out

    def sample(self, t: float) -> dict[str, list[dict[str, Any]]]:
        live: dict[str, list[dict[str, Any]]] = {}
        for name, node in self.nodes.items():
            if node.proc is not None and (rc := node.proc.poll()) is not None:
                raise NodeError(f"node {name} died during the soak (exit status {rc})")
            rss = node.memory_kib()["rss"]
            self.seen.rss.setdefault(name, []).append((t, rss))
            listing = self.request(node, "GET", "/sessions", tolerant=True, timeout=20)
            if listing is None:
                continue
            sessions = listing["sessions"]
            live[name] = sessions
            pending = sum(s["stats"].get("asr_pending", 0) for s in sessions)
            self.seen.asr_pending_peak[name] = max(self.seen.asr_pending_peak.get(name, 0), pending)
            for s in sessions:
                if s["state"] != "connected":
                    tag = f"{name}:{s['id']} {s['state']} ({s['end_reason']})"
                    if tag not in self.seen.early_ends:
                        self.seen.early_ends.append(tag)
        return live

    def run(self) -> None:
        total = self.args.minutes * 60
        t0 = time.monotonic()
        next_print = 0.0
        while (t := time.monotonic() - t0) < total:
            live = self.sample(t)
            if t >= next_print:
                parts = []
                for name, sessions in live.items():
                    segs = sum(sum(s["stats"].get("segments", {}).values()) for s in sessions)
                    pending = sum(s["stats"].get("asr_pending", 0) for s in sessions)
                    rss = self.seen.rss[name][-1][1] // 1024
                    parts.append(f"{name}: {rss} MiB, {segs} segments, ASR backlog {pending}")
                print(f"[{t:6.0f} s] " + " | ".join(parts), flush=True)
                next_print += 30
            time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - t0 - t)))

    def drain(self) -> float:
        """Wait until no utterance is waiting for ASR anywhere: the backlog, in seconds."""
        t0 = time.monotonic()
        if self.args.no_transcribe:
            return 0.0
        while time.monotonic() - t0 < self.args.drain_timeout:
            busy = 0
            for node in self.nodes.values():
                listing = self.request(node, "GET", "/sessions", tolerant=True, timeout=20)
                if listing is None:
                    busy += 1
                    continue
                for s in listing["sessions"]:
                    st = s["stats"]
                    busy += st.get("asr_pending", 0) + (1 if st.get("in_speech") else 0)
            if busy == 0:
                return time.monotonic() - t0
            time.sleep(0.5)
        return float("nan")

    def hang_up(self) -> None:
        def one(call: Call) -> None:
            # Half from each side, so each direction has exact frame counts (see the top).
            node, cid = (self.a, call.a_id) if call.index % 2 else (self.b, call.b_id)
            call.hung_up_by = node.name
            try:
                self.request(node, "DELETE", f"/sessions/{cid}", timeout=120)
            except NodeError as exc:
                with self.lock:
                    self.seen.http_errors.append(str(exc))

        with ThreadPoolExecutor(max_workers=len(self.calls)) as pool:
            list(pool.map(one, self.calls))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = self.states()
            if all(s not in ("connected", "connecting", "listening") for s in states.values()):
                return
            time.sleep(0.2)

    # -- the account --------------------------------------------------------------------

    def report(self, drained_s: float) -> bool:
        ok = True
        lost = {"A->B": 0, "B->A": 0}
        exact = {"A->B": 0, "B->A": 0}
        in_flight: list[int] = []
        sent_total = {"A->B": 0, "B->A": 0}
        seg_expected = seg_stored = seg_missing = seg_mismatched = 0
        local_counts = {"A": 0, "B": 0}
        failed_calls = []
        for call in self.calls:
            sa = self.request(self.a, "GET", f"/sessions/{call.a_id}")
            sb = self.request(self.b, "GET", f"/sessions/{call.b_id}")
            for snap, name in ((sa, "A"), (sb, "B")):
                expected_reason = "hangup" if call.hung_up_by == name else "peer_hangup"
                if snap["state"] != "ended" or snap["end_reason"] != expected_reason:
                    failed_calls.append(
                        f"call {call.index} on {name}: {snap['state']} ({snap['end_reason']})"
                    )
            for direction, src, dst in (("A->B", sa, sb), ("B->A", sb, sa)):
                sent, got = src["stats"]["frames_sent"], dst["stats"]["frames_received"]
                sent_total[direction] += sent
                if direction[0] == call.hung_up_by:
                    lost[direction] += sent - got
                    exact[direction] += 1
                else:
                    in_flight.append(sent - got)
            if self.args.no_transcribe:
                continue
            # The live revision: once a call's post-call pass is done, its transcript's
            # default is the final one, which each node makes on its own.
            live = "transcript?revision=live"
            ta = self.request(self.a, "GET", f"/sessions/{call.a_id}/{live}")["segments"]
            tb = self.request(self.b, "GET", f"/sessions/{call.b_id}/{live}")["segments"]
            for speaker_segs, peer_segs, name in ((ta, tb, "A"), (tb, ta, "B")):
                mine = [s for s in speaker_segs if s["speaker"] == "local"]
                theirs = [s for s in peer_segs if s["speaker"] == "remote"]
                local_counts[name] += len(mine)
                seg_expected += len(mine)
                seg_stored += len(theirs)
                key = {(s["start"], s["end"]): s["text"] for s in theirs}
                for s in mine:
                    text = key.get((s["start"], s["end"]))
                    if text is None:
                        seg_missing += 1
                    elif text != s["text"]:
                        seg_mismatched += 1

        minutes = self.args.minutes
        print("\n== soak result ==")
        print(f"calls: {len(self.calls)} for {minutes:g} min; ASR drained {drained_s:.1f} s after")
        for d in ("A->B", "B->A"):
            print(
                f"frames {d}: {sent_total[d]} sent; lost {lost[d]} "
                f"(exact on the {exact[d]} calls hung up by {d[0]})"
            )
        if in_flight:
            print(
                f"frames in flight at hang-up (toward the side that hung up): "
                f"total {sum(in_flight)}, max {max(in_flight)} per call"
            )
        ok &= sum(lost.values()) == 0
        if not self.args.no_transcribe:
            print(
                f"segments: {seg_expected} stored as local ({local_counts['A']} on A, "
                f"{local_counts['B']} on B), {seg_stored} stored as remote on the peer; "
                f"missing {seg_missing}, text differs {seg_mismatched}"
            )
            print(f"ASR backlog peak (utterances waiting): {self.seen.asr_pending_peak}")
            ok &= seg_missing == 0 and seg_mismatched == 0 and seg_expected > 0
        # A drain that timed out is not itself a failure: `--drain-timeout 1` hangs up one
        # second after the speech, as people do, and the hang-up's own drain must then bring
        # every last final to both nodes (the segment counts and drop counters above say).
        for name, node in self.nodes.items():
            samples = self.seen.rss.get(name, [])
            if not samples:
                continue
            peak = node.memory_kib()["peak"] if node.proc and node.proc.poll() is None else 0
            third = next(rss for t, rss in samples if t >= samples[-1][0] / 3)
            end = samples[-1][1]
            growth = (end - third) / third
            flat = growth <= FLAT_TOLERANCE
            ok &= flat
            print(
                f"node {name} memory: peak {peak // 1024} MiB (VmHWM); RSS at 1/3 "
                f"{third // 1024} MiB, at the end {end // 1024} MiB ({growth:+.1%}): "
                f"{'flat' if flat else 'GROWING'}"
            )
        errors = {name: node.log_lines("ERROR") for name, node in self.nodes.items()}
        counted = [
            drop_counts(node.request("GET", "/metrics", timeout=20).text)
            for node in self.nodes.values()
        ]
        drops = {label: int(sum(c[name] for c in counted)) for name, label in DROP_COUNTERS.items()}
        print(
            f"API 5xx answers: {self.seen.http_5xx}; API reads that timed out: "
            f"{self.seen.api_timeouts}; other API errors: {self.seen.http_errors}"
        )
        print(f"calls that ended on their own during the soak: {self.seen.early_ends or 0}")
        print(f"calls that did not end as hung up: {failed_calls or 0}")
        print("ERROR lines in the logs: " + ", ".join(f"{n} {len(e)}" for n, e in errors.items()))
        for e in [line for lines in errors.values() for line in lines][:5]:
            print(f"  {e}")
        print("drops (GET /metrics): " + ", ".join(f"{k}: {v}" for k, v in drops.items()))
        ok &= self.seen.http_5xx == 0 and not self.seen.http_errors
        ok &= self.seen.api_timeouts == 0
        ok &= not self.seen.early_ends and not failed_calls
        ok &= not any(errors.values())
        if not self.args.final:  # with --final the transcript of record is the measure
            ok &= drops["utterances dropped (ASR queue full)"] == 0
            ok &= drops["calls ended with utterances untranscribed"] == 0
        print("PASS" if ok else "FAIL")
        return ok

    def final_account(self) -> bool:
        """--final: wait for both nodes' post-call passes, then count each side's
        utterances (the VAD's stretches of its input) against the final revisions."""
        t0 = time.monotonic()
        for node, ids in (
            (self.a, [c.a_id for c in self.calls]),
            (self.b, [c.b_id for c in self.calls]),
        ):
            for cid in ids:
                if not self.wait_pass(node, cid, t0 + self.args.final_timeout):
                    return False
        waited = time.monotonic() - t0
        print(f"\n== transcript of record ==\npost-call passes done {waited:.0f} s after")
        spans_of: dict[Path, list[tuple[float, float]]] = {}
        total = kept = live_kept = 0
        missed: list[str] = []
        for call in self.calls:
            views = {
                (name, rev): self.request(
                    node, "GET", f"/sessions/{cid}/transcript?revision={rev}"
                )["segments"]
                for name, node, cid in (("A", self.a, call.a_id), ("B", self.b, call.b_id))
                for rev in ("live", "final")
            }
            for speaker, peer, wav in (("A", "B", call.a_input), ("B", "A", call.b_input)):
                assert wav is not None
                if wav not in spans_of:
                    audio = read_wav(wav).astype(np.float32) / 32768.0
                    spans_of[wav] = speech_spans(audio, SegmenterConfig().make_vad())
                final = side_spans(views, speaker, peer, "final")
                live = side_spans(views, speaker, peer, "live")
                for a, b in spans_of[wav]:
                    total += 1
                    live_kept += covered(a, b, live)
                    if covered(a, b, final):
                        kept += 1
                    else:
                        missed.append(f"call {call.index} {speaker} {a:.1f}-{b:.1f} s")
        print(
            f"utterances of the inputs (VAD): {total}; in a final revision: {kept}; "
            f"in the live revision: {live_kept}; missing from every final revision: "
            f"{total - kept} {missed[:10]}"
        )
        ok = total > 0 and kept == total
        print("PASS" if ok else "FAIL")
        return ok

    def wait_pass(self, node: NodeProcess, call_id: str, deadline: float) -> bool:
        while True:
            p = self.request(node, "GET", f"/sessions/{call_id}", timeout=60)["postcall"]
            if p and p["state"] in ("done", "failed"):
                if p["state"] == "failed":
                    print(f"{node.name} {call_id}: pass failed: {p['error']}")
                return p["state"] == "done"
            if time.monotonic() > deadline:
                print(f"{node.name} {call_id}: no finished pass in time: {p}")
                return False
            time.sleep(2.0)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    parser.add_argument("--minutes", type=float, default=5.0, help="speech per call (default 5)")
    parser.add_argument(
        "--no-transcribe", action="store_true", help="transport only: no node transcribes"
    )
    parser.add_argument(
        "--speech-dir",
        type=Path,
        default=Path(os.environ.get("IM_SPEECH_DIR") or REPO.parent / "shared/data/speech"),
        help="speech evaluation set (default: ../shared/data/speech or IM_SPEECH_DIR; the "
        "repo's clip if absent)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="longest wait for the ASR backlog after the speech ends, then hang up "
        "(default 600 s; 1: hang up a second after the speech, the backlog still pending)",
    )
    parser.add_argument(
        "--final",
        action="store_true",
        help="then wait for the post-call passes and count the inputs' utterances against "
        "the final revisions (the transcript of record)",
    )
    parser.add_argument(
        "--final-timeout", type=float, default=1800.0, help="longest wait for the passes (s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directory")
    args = parser.parse_args()
    if args.calls < 1 or args.minutes <= 0:
        parser.error("--calls and --minutes must be positive")

    work = Path(tempfile.mkdtemp(prefix="intellimeet-soak-"))
    soak = Soak(args, work)
    ok = False
    try:
        soak.start()
        soak.run()
        drained = soak.drain()
        print(f"speech over; ASR backlog drained in {drained:.1f} s")
        soak.hang_up()
        ok = soak.report(drained)
        if args.final:
            ok = soak.final_account() and ok
    except (NodeError, requests.RequestException, KeyboardInterrupt) as exc:
        print(f"soak aborted: {exc}", file=sys.stderr)
        for node in soak.nodes.values():
            print(f"--- {node.name} log ---\n{node.log_tail()}", file=sys.stderr)
        ok = False
    finally:
        soak.stop()
        if not args.keep and ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"node logs and databases kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
