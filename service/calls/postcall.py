"""The post-call pass: once a call has ended, its recording is transcribed again, whole,
and kept as the transcript's *final* revision beside the live one.

Why: the live pass decodes utterance by utterance with the model that keeps captions
fast, and whatever it dropped (a full queue, the hang-up drain, a killed node) is gone
from it. The recording still holds every word. ``IM_FINAL_MODEL`` (default: the live
model) decodes each side with Whisper's own long-form decoding and word timestamps
(service/asr/longform.py: one low-priority thread that gives way to live decoding), and
the result replaces the call's final revision in one transaction. A final segment that
no live segment of its speaker overlaps in time is marked ``live_missed``.

Never less than the live pass: a kill leaves a recording that ends a second or two before
the call did (service/recordings writes a page about every second), and the live pass may
already have stored words from that last stretch. From the first live segment that runs
past the recording's end, the final revision keeps the live segments as they were
(``from_live``, without word timings) and the pass's words up to that point only.

Durable: a pass is a row (``transcript_passes``) before any work starts, so a node killed
mid-pass resumes it at its next start, and a call the kill interrupted gets its pass then,
from what its recording holds. Passes run one at a time, oldest first, in one greenlet;
``changed`` wakes whoever waits for a pass to finish (the live feed's ``revision`` event).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import numpy as np
from gevent import subprocess
from gevent.event import Event

from service.asr.longform import LongFormError, LongSegment
from service.frames import SAMPLE_RATE
from service.recordings import (
    SPEAKERS,
    RecordingFile,
    list_recordings,
    recording_path,
    trim_torn_tail,
)
from service.store.db import FINAL, utcnow
from service.threadhub import off_hub
from service.vocab import CallState, Speaker, Task

if TYPE_CHECKING:
    from service.asr.longform import LongFormTranscriber
    from service.config import Settings
    from service.store.db import Store
    from service.store.models import SegmentRow, TranscriptPass

log = logging.getLogger(__name__)

IDLE_WAIT_S = 30.0  # an idle pass loop looks at the store this often (a wake comes sooner)
PROGRESS_EVERY_S = 1.0  # at most one progress write this often
DECODE_TIMEOUT_S = 600.0  # ffmpeg decoding one side (hours of Opus take seconds)
RETRY_AFTER_FAILURE_S = 5.0  # the loop's pause after a store failure, before looking again
# Live audio past a recording's end by less than this is taken to be in it: an Ogg page is
# 20 ms, and live segment times are rounded to frames.
RECORDED_SLACK_S = 0.1
# A lossless copy shorter than its Opus side by more than this stopped early: not used.
# (After a kill each loses up to about a second, not always the same.)
LOSSLESS_SHORT_S = 1.5


def recorded_sides(settings: Settings, call_id: str) -> list[RecordingFile]:
    """The audio of each side of a call, local first: the one seam between the pass and
    the recordings (service/recordings)."""
    return list_recordings(settings.recordings_dir, call_id)


def decode_audio(path: Path) -> np.ndarray:
    """A recording as float32 mono 16 kHz, through ffmpeg (a gevent subprocess: the hub
    keeps running). What a torn or truncated file holds up to the damage is kept."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path)]
    command += ["-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=DECODE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LongFormError(f"cannot decode {path.name}: {exc}") from None
    if done.returncode != 0 and not done.stdout:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LongFormError(f"cannot decode {path.name}: {why[0][:200]}")
    # An hour of a side is 115 MB of samples: converted off the hub, not in one stall of it.
    return off_hub(_to_float, done.stdout)


def _to_float(s16le: bytes) -> np.ndarray:
    pcm = np.frombuffer(s16le, dtype="<i2", count=len(s16le) // 2)  # no copy
    audio = pcm.astype(np.float32)
    audio *= 1 / 32768  # in place, and exact: a power of two
    return audio


def side_audio(side: RecordingFile) -> tuple[np.ndarray, float]:
    """What the pass transcribes of a side, and how far into the call it reaches (s): its
    lossless copy when one was kept (fewer errors: docs/recordings.md), read up to any
    damage as a torn Ogg page is, unless it ended early (its writer failed) and holds
    less of the call than the Opus file."""
    if side.lossless is not None:
        with contextlib.suppress(LongFormError):  # unreadable: the Opus file then
            audio = decode_audio(side.lossless)
            if len(audio) / SAMPLE_RATE >= side.duration_s - LOSSLESS_SHORT_S:
                return audio, len(audio) / SAMPLE_RATE
            log.warning(
                "%s holds less than %s: the pass reads the latter",
                side.lossless.name,
                side.path.name,
            )
    return decode_audio(side.path), side.duration_s


def overlaps_live(segment: LongSegment, live: list[tuple[float, float]]) -> bool:
    """Whether any live segment (start, end) of the same speaker overlaps it in time."""
    return any(start < segment.end and end > segment.start for start, end in live)


@dataclass
class _Progress:
    """Writes a running pass's progress to the store, at most every PROGRESS_EVERY_S."""

    store: Store
    pass_id: int
    sides: int
    side: int = 0
    written_at: float = 0.0

    def __call__(self, share: float) -> None:
        now = time.monotonic()
        if now - self.written_at < PROGRESS_EVERY_S:
            return
        self.written_at = now
        progress = round((self.side + share) / max(1, self.sides), 3)
        try:
            self.store.update_pass(self.pass_id, progress=progress)
        except Exception:  # progress is a courtesy: the pass goes on
            log.debug("pass %d: progress not written", self.pass_id, exc_info=True)


class PostCall:
    """Create on the hub; ``start`` once the store is migrated; ``close`` once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        transcriber: LongFormTranscriber,
        automatic: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.transcriber = transcriber
        self.automatic = automatic  # IM_POSTCALL: a pass for every call that ends
        self.changed = Event()  # set (and replaced) whenever a pass finishes
        self._wake = Event()
        self._loop: gevent.Greenlet | None = None

    @property
    def model(self) -> str:
        return self.transcriber.model_name

    # -- queueing -----------------------------------------------------------------------

    def request(self, call_id: str) -> TranscriptPass | None:
        """Queue a pass over an ended call; None when one is already pending or running."""
        row = self.store.add_pass(call_id, self.model)
        if row is not None:
            log.info("call %s: post-call pass %d queued (%s)", call_id, row.id, self.model)
            self._wake.set()
        return row

    def has_recording(self, call_id: str) -> bool:
        """Whether either side's file exists (what ``recorded_sides`` would list), without
        its scan of every page: this runs on the hub, as each call ends."""
        root = self.settings.recordings_dir
        return any(recording_path(root, call_id, s).exists() for s in SPEAKERS)

    def pass_follows(self, session: Any) -> bool:
        """Whether this call, ending now, gets a pass over a recording of all of it."""
        wanted = session.transcribing or session.options.transcribe_after
        recorder = session.recorder
        return (
            self.automatic
            and wanted
            and session.times.connected is not None
            and recorder is not None
            and recorder.stopped is None
        )

    def call_ended(self, session: Any) -> None:
        """A call of this node ended (CallSession.end): queue its pass when it connected,
        transcribed and recorded something."""
        wanted = session.transcribing or session.options.transcribe_after
        if not self.automatic or not wanted or session.times.connected is None:
            return
        try:
            if self.has_recording(session.id):
                self.request(session.id)
        except Exception:
            log.exception("call %s: could not queue its post-call pass", session.id)

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        """Resume what a previous run left (a running pass starts over: its work was in
        memory), and queue the calls a kill interrupted; then run passes until close."""
        for row in self.store.open_passes():
            if row.state == "running":
                self.store.update_pass(row.id, state="pending", progress=0.0)
                log.info("call %s: resuming post-call pass %d", row.call_id, row.id)
        if self.automatic:
            for call_id in self.store.calls_without_pass(CallState.INTERRUPTED):
                call = self.store.get_call(call_id)
                wanted = call is not None and (call.transcribe or call.transcribe_after)
                if wanted and self.has_recording(call_id):
                    self.request(call_id)
        self._loop = gevent.spawn(self._run_passes)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.kill()
        self.transcriber.close()

    def _run_passes(self) -> None:
        while True:
            self._wake.clear()
            try:
                pending = self.store.open_passes()
            except Exception:
                log.exception("post-call passes: cannot read the store")
                gevent.sleep(RETRY_AFTER_FAILURE_S)
                continue
            if not pending:
                self._wake.wait(IDLE_WAIT_S)
                continue
            self._run(pending[0])

    def _run(self, row: TranscriptPass) -> None:
        started = time.monotonic()
        try:
            self.store.update_pass(row.id, state="running", started_at=utcnow(), error=None)
            rows = self._transcribe(row)
            self.store.store_revision(row.id, row.call_id, FINAL, rows)
        except Exception as exc:
            why = str(exc) if isinstance(exc, LongFormError) else f"{type(exc).__name__}: {exc}"
            log.warning("call %s: post-call pass %d failed: %s", row.call_id, row.id, why)
            try:
                self.store.update_pass(
                    row.id, state="failed", error=why[:500], finished_at=utcnow()
                )
            except Exception:
                log.exception("pass %d: its failure could not be stored", row.id)
                gevent.sleep(RETRY_AFTER_FAILURE_S)
                return
        else:
            missed = sum(1 for r in rows if r["live_missed"])
            log.info(
                "call %s: final revision stored, %d segments (%d the live pass missed) in %.1f s",
                row.call_id,
                len(rows),
                missed,
                time.monotonic() - started,
            )
        changed, self.changed = self.changed, Event()
        changed.set()

    def _transcribe(self, row: TranscriptPass) -> list[dict[str, Any]]:
        call = self.store.get_call(row.call_id)
        if call is None:
            raise LongFormError("the call is gone")
        sides = off_hub(recorded_sides, self.settings, row.call_id)  # reads every page
        if not sides:
            raise LongFormError("the call has no recording")
        live = self.store.segments(row.call_id)
        progress = _Progress(self.store, row.id, len(sides))
        task = Task(call.task) if call.task else Task.TRANSCRIBE
        out: list[dict[str, Any]] = []
        for i, side in enumerate(sides):
            progress.side = i
            if side.interrupted:  # the call is over: nothing writes this file any more
                off_hub(trim_torn_tail, side)
            # recorded_s: how far the audio read reaches (after a kill a lossless copy
            # and its Opus file each end on their own last flush).
            audio, recorded_s = side_audio(side)
            segments = self.transcriber.transcribe(audio, call.language, task, progress)
            mine = [s for s in live if s.speaker == side.speaker]
            spans = [(s.start_s, s.end_s) for s in mine]
            lost = [s for s in mine if s.end_s > recorded_s + RECORDED_SLACK_S]
            carried: list[SegmentRow] = []
            if lost:  # the recording lost audio that the live pass transcribed
                cut = min(s.start_s for s in lost)
                segments = until(segments, cut)
                carried = [s for s in mine if s.start_s >= cut]
            rows = _rows(Speaker(side.speaker), segments, spans, task)
            out.extend(rows + _carried(carried, len(rows)))
        return out


def until(segments: list[LongSegment], cut: float) -> list[LongSegment]:
    """The pass's segments cut at ``cut`` seconds: a segment that runs past it keeps the
    words that end by then (its text made of them), and nothing after it is kept."""
    out = []
    for s in segments:
        if s.end <= cut:
            out.append(s)
        elif s.start < cut:
            words = [w for w in s.words if w["end"] <= cut]
            if words:
                text = "".join(w["word"] for w in words).strip()
                out.append(replace(s, end=words[-1]["end"], text=text, words=words))
    return out


def _carried(live: list[SegmentRow], first: int) -> list[dict[str, Any]]:
    """Live segments kept as they were in the final revision, numbered from ``first``."""
    return [
        {
            "speaker": s.speaker,
            "number": first + i,
            "start_s": s.start_s,
            "end_s": s.end_s,
            "text": s.text,
            "language": s.language,
            "task": s.task,
            "avg_logprob": s.avg_logprob,
            "no_speech_prob": s.no_speech_prob,
            "compression_ratio": s.compression_ratio,
            "words": None,
            "live_missed": False,
            "from_live": True,
        }
        for i, s in enumerate(live)
    ]


def _rows(
    speaker: Speaker, segments: list[LongSegment], live: list[tuple[float, float]], task: Task
) -> list[dict[str, Any]]:
    """The final revision's rows of one side (SegmentRow fields), numbered in time order."""
    kept = [s for s in segments if s.text]
    return [
        {
            "speaker": str(speaker),
            "number": number,
            "start_s": s.start,
            "end_s": s.end,
            "text": s.text,
            "language": s.language,
            "task": str(task),
            "avg_logprob": s.avg_logprob,
            "no_speech_prob": s.no_speech_prob,
            "compression_ratio": s.compression_ratio,
            "words": s.words,
            "live_missed": not overlaps_live(s, live),
            "from_live": False,
        }
        for number, s in enumerate(kept)
    ]
