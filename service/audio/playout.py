"""The adaptive playout (jitter) buffer between the network and a sink.

The network delivers frames when it likes; a sound device wants exactly one 20 ms frame
every 20 ms. This buffer sits in between: the receive greenlet ``push``es each arriving
frame (still encoded), and the playout clock ``pull``s one decoded 20 ms frame per tick —
real audio, a concealment, or silence, never nothing and never a wait.

How it adapts (the ideas of WebRTC's NetEq, kept small):

- **Schedule and jitter** (service/audio/jitter.py): frame ``s`` is due at ``base + s·20 ms``
  on the receiver's clock, ``base`` following the earliest packets; jitter is a high quantile
  of how late frames arrive against that. The buffer aims to play each frame that much after
  its due time (``target``), bounded by ``max_delay_ms``; it starts with one frame.
- **Slack** is how long after its due time the next frame is actually being played. Too much
  slack (after a burst, or once jitter calms down) is latency no one needs, so frames are
  dropped — preferably quiet ones, always with a crossfade — one per tick, or many at once
  when the buffer is far behind. Too little, and an underrun plays a concealment *without*
  moving on, which grows the slack by exactly the late frame's lateness.
- **Gaps and joins** (service/audio/concealment.py): a lost frame is rebuilt (Opus FEC or
  PLC) or faded out (PCM), and every join that is not the codec's own continuation is
  crossfaded, so nothing clicks. Figures: service/audio/playout_stats.py.

Threads: ``push`` runs on the gevent hub, ``pull`` on the playout clock (a PortAudio callback
thread, or a greenlet). Shared state sits behind a *native* lock held only for dict/deque
bookkeeping (microseconds, no I/O, no decoding); the schedule belongs to the pushing side,
decoding and all output state (the concealer, the latency record) to the single pulling
thread. Counters are written by one side each, so snapshots need no lock. No
logging from ``pull`` (a gevent-patched logging lock must not be taken on a foreign thread):
``log_changes`` is called from the hub instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from service.audio.codecs import CodecError, codec_name
from service.audio.concealment import Concealer, Packet, rms
from service.audio.jitter import Schedule
from service.audio.playout_stats import LatencyRecord, PlayoutStats
from service.frames import FRAME_MS, FRAME_SAMPLES
from service.threadhub import native_lock

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
QUIET_RMS = 300.0  # about -40 dBFS: a pause in speech, where a dropped frame goes unheard


class PlayoutBuffer:
    """See the module docstring. One per received stream; thread-safe as described there."""

    def __init__(
        self,
        *,
        max_delay_ms: int = 300,
        capacity_frames: int = 50,
        jitter_window_s: float = 5.0,
        jitter_quantile: float = 0.95,
        plc_frames: int = 5,
        latency_ring: int = 3000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not FRAME_MS <= max_delay_ms <= capacity_frames * FRAME_MS:
            raise ValueError("max_delay_ms must be between one frame and the capacity")
        if not 0.5 <= jitter_quantile < 1.0:
            raise ValueError("jitter_quantile must be in [0.5, 1)")
        self.max_delay_s = max_delay_ms / 1000
        self.capacity = capacity_frames
        self._clock = clock
        self._wall = wall_clock
        self._lock = native_lock()  # pull() takes it on PortAudio's thread, not a greenlet

        # Shared (under the lock): what waits to be played and where playing stands.
        self._packets: dict[int, Packet] = {}
        self._next: int | None = None  # extended sequence number due next
        self._newest: int | None = None
        # Push side only (the hub).
        self._schedule = Schedule(jitter_window_s, jitter_quantile)
        self.frames_received = 0
        self.frames_dropped_late = 0
        self.frames_dropped_overflow = 0
        self.frames_duplicate = 0
        self.frames_rejected = 0
        self.resyncs = 0
        # Pull side only (the playout clock).
        self._out = Concealer(plc_frames)
        self._underrun = False
        self._surplus_since: float | None = None
        self._started = False
        self.frames_played = 0
        self.frames_dropped_catchup = 0
        self.underruns = 0
        self._latency = LatencyRecord(latency_ring)
        self._logged: dict[str, int] = {}

    @property
    def frames_concealed(self) -> int:
        return self._out.frames_concealed

    @property
    def frames_undecodable(self) -> int:
        return self._out.frames_undecodable

    # -- the network side ---------------------------------------------------------------

    def push(self, seq: int, capture_time_us: int, codec: Any, payload: bytes) -> bool:
        """One frame as it arrived (call from one thread, the receive greenlet). Never
        blocks beyond the bookkeeping lock. False if it was not kept (late, duplicate,
        rejected); every such frame is counted."""
        try:
            name = codec_name(codec)
        except CodecError:
            self.frames_rejected += 1
            return False
        if not payload or not 0 <= seq <= 0xFFFFFFFF:
            self.frames_rejected += 1
            return False
        now = self._clock()
        ext = self._schedule.extend(seq)
        with self._lock:
            # Measured from what is held, not only from what plays next: before the first
            # pull, a frame far below the newest would otherwise stretch the schedule
            # between them over billions of frame slots.
            start = self._next if self._next is not None else self._newest
            resync = self._newest is not None and (
                ext > self._newest + self.capacity
                or (start is not None and ext < start - self.capacity)
            )
            if resync:
                # A jump of more than the whole buffer either way: a restarted or confused
                # peer. Start over from this frame rather than wait for the old numbering.
                self._packets.clear()
                self._next = None
                self._newest = None
            elif self._next is not None and ext < self._next:
                self.frames_dropped_late += 1
                return False
            elif ext in self._packets:
                self.frames_duplicate += 1
                return False
            self._packets[ext] = Packet(name, bytes(payload), int(capture_time_us))
            if self._newest is None or ext > self._newest:
                self._newest = ext
            while len(self._packets) > self.capacity:
                oldest = min(self._packets)
                del self._packets[oldest]
                self.frames_dropped_overflow += 1
                if self._next is not None and self._next <= oldest:
                    self._next = oldest + 1
        self.frames_received += 1
        if resync:
            self.resyncs += 1
            self._schedule.restart()
            log.warning("playout: sequence jumped to %d; buffer restarted", seq)
        self._schedule.arrived(ext, now)
        return True

    # -- the playout side ---------------------------------------------------------------

    def pull(self) -> np.ndarray:
        """The next 20 ms frame, int16. Never blocks (beyond the bookkeeping lock) and never
        raises: call it from exactly one thread, once per 20 ms of audio played."""
        try:
            return self._pull()
        except Exception:  # a playout clock must keep ticking whatever a frame holds
            self._out.frames_undecodable += 1
            self._out.join = True
            return self._emit(np.zeros(FRAME_SAMPLES, dtype=np.int16))

    def _target_s(self) -> float:
        return min(self._schedule.jitter, self.max_delay_s - FRAME_S)

    def _pull(self) -> np.ndarray:
        now = self._clock()
        target = self._target_s()
        with self._lock:
            if self._next is None and self._packets:
                self._next = min(self._packets)  # first frame, or after a resync
            nxt = self._next
            if nxt is None:
                packet = None
                action = "idle"
            else:
                packet = self._packets.pop(nxt, None)
                # How long after its due time the next frame plays now; beyond the target it
                # is latency nobody asked for.
                surplus = now - (self._schedule.base + nxt * FRAME_S) - target
                if packet is None:
                    newer = self._newest is not None and self._newest > nxt
                    action = "lost" if newer else "underrun"
                    follower = self._packets.get(nxt + 1) if newer else None
                    if newer:
                        self._next = nxt + 1
                else:
                    action = "play"
                    self._next = nxt + 1
                    skipped = 0
                    if surplus > 6 * FRAME_S and self._newest is not None:
                        # Far behind (a burst after a stall): jump to the target at once,
                        # keeping at least one frame in hand. Only the frames held are
                        # visited (at most `capacity`), never the numbers in between: a
                        # peer picks its sequence numbers, and a jump of 2**31 must cost
                        # what one of 2 does.
                        want = min(int(surplus / FRAME_S) - 1, self._newest - nxt)
                        last = nxt + want
                        for s in sorted(k for k in self._packets if k <= last):
                            packet = self._packets.pop(s)
                            skipped += 1
                        if want > 0:
                            self._next = last + 1
                            surplus -= want * FRAME_S
        if action == "idle":
            return self._out.conceal(None, started=self._started)
        if action == "underrun":
            if not self._underrun:
                self._underrun = True
                self.underruns += 1
            return self._out.conceal(None, started=True)
        self._underrun = False
        if action == "lost":
            return self._out.conceal(follower, started=True, lost=True)
        assert packet is not None
        if skipped:
            self.frames_dropped_catchup += skipped
            self._out.join = True  # the decoder never saw the skipped frames
        self._started = True
        pcm = self._out.decode(packet)
        if pcm is None:
            return self._out.conceal(None, started=True)
        if surplus > FRAME_S + 0.005:
            if self._surplus_since is None:
                self._surplus_since = now
            forced = surplus > 3 * FRAME_S or now - self._surplus_since > 1.0
            if forced or rms(pcm) < QUIET_RMS:
                dropped = self._drop_one(pcm)
                if dropped is not None:
                    self._surplus_since = None
                    return self._emit(dropped, packet=None)
        else:
            self._surplus_since = None
        return self._emit(pcm, packet=packet)

    def _drop_one(self, skipped_pcm: np.ndarray) -> np.ndarray | None:
        """Play the frame after ``skipped_pcm`` in its place, crossfading from the skipped
        frame (which is what would have followed the last output seamlessly)."""
        with self._lock:
            nxt = self._next
            packet = self._packets.pop(nxt, None) if nxt is not None else None
            if packet is not None and nxt is not None:
                self._next = nxt + 1
        if packet is None:
            return None
        pcm = self._out.decode(packet)
        self.frames_dropped_catchup += 1
        if pcm is None:
            return self._out.conceal(None, started=True)
        self._record_latency(packet)
        self.frames_played += 1
        return self._out.splice(skipped_pcm, pcm)

    def _emit(self, pcm: np.ndarray, packet: Packet | None = None) -> np.ndarray:
        """A real frame (not a concealment) out; ``packet`` when it is the one it decodes."""
        if packet is not None:
            self._record_latency(packet)
            self.frames_played += 1
        return self._out.emit(pcm)

    def _record_latency(self, packet: Packet) -> None:
        self._latency.add((self._wall() - packet.capture_us / 1e6) * 1000)

    # -- figures ------------------------------------------------------------------------

    @property
    def latency(self) -> LatencyRecord:
        """Every frame's capture-to-playout delay of the call, binned (GET /metrics)."""
        return self._latency

    def latencies_ms(self) -> list[float]:
        """Capture-to-playout delay of recent frames (wall clocks of sender and receiver;
        meaningful on one host or with synchronised clocks)."""
        return self._latency.recent()

    def figures(self) -> PlayoutStats:
        with self._lock:
            first = self._next if self._next is not None else min(self._packets, default=None)
            newest = self._newest
        depth = 0 if first is None or newest is None else max(0, newest - first + 1)
        return PlayoutStats(
            target_ms=round((self._target_s() + FRAME_S) * 1000, 1),
            depth_ms=depth * FRAME_MS,
            jitter_ms=round(self._schedule.jitter * 1000, 1),
            frames_received=self.frames_received,
            frames_played=self.frames_played,
            frames_concealed=self._out.frames_concealed,
            frames_fec=self._out.frames_fec,
            frames_silence=self._out.frames_silence,
            frames_dropped_late=self.frames_dropped_late,
            frames_dropped_overflow=self.frames_dropped_overflow,
            frames_dropped_catchup=self.frames_dropped_catchup,
            frames_duplicate=self.frames_duplicate,
            frames_rejected=self.frames_rejected,
            frames_undecodable=self._out.frames_undecodable,
            underruns=self.underruns,
            resyncs=self.resyncs,
            latency_ms=self._latency.summary(),
        )

    @property
    def stats(self) -> dict[str, Any]:
        """``figures()`` as JSON-ready fields (what the API shows under ``output``)."""
        return asdict(self.figures())

    def log_changes(self, logger: logging.Logger = log, label: str = "playout") -> None:
        """Log drop and concealment counters that moved since the last call. Call from the
        hub (never from the playout thread), e.g. every few seconds."""
        keys = (
            "frames_dropped_late",
            "frames_dropped_overflow",
            "frames_dropped_catchup",
            "frames_duplicate",
            "frames_rejected",
            "frames_undecodable",
            "frames_concealed",
            "underruns",
        )
        moved = {}
        for k in keys:
            v = getattr(self, k)
            if v != self._logged.get(k, 0):
                moved[k] = v - self._logged.get(k, 0)
                self._logged[k] = v
        if moved:
            logger.info(
                "%s: %s (target %.0f ms, jitter %.0f ms)",
                label,
                ", ".join(f"{k} +{v}" for k, v in moved.items()),
                (self._target_s() + FRAME_S) * 1000,
                self._schedule.jitter * 1000,
            )
