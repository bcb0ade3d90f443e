"""The adaptive playout (jitter) buffer between the network and a sink.

The network delivers frames when it likes; a sound device wants exactly one 20 ms frame
every 20 ms. This buffer sits in between: the receive greenlet ``push``es each arriving
frame (still encoded), and the playout clock ``pull``s one decoded 20 ms frame per tick —
real audio, a concealment, or silence, never nothing and never a wait.

How it adapts (the ideas of WebRTC's NetEq, kept small):

- **Schedule.** Frame ``s`` is due at ``base + s·20 ms`` on the receiver's clock, where
  ``base`` is the smallest ``arrival - s·20 ms`` seen in the last few seconds: the schedule
  the earliest packets keep. Sequence numbers, not the sender's capture clock, define it, so a
  peer with an odd clock cannot confuse the buffer (drift between the two sound cards is
  followed by the sliding minimum).
- **Jitter** is a high quantile of how late frames arrive against that schedule, over a
  sliding window. The buffer aims to play each frame that much after its due time
  (``target``), bounded by ``max_delay_ms``; it starts with one frame.
- **Slack** is how long after its due time the next frame is actually being played. Too much
  slack (after a burst, or once jitter calms down) is latency no one needs, so frames are
  dropped — preferably quiet ones, always with a crossfade — one per tick, or many at once
  when the buffer is far behind. Too little, and an underrun plays a concealment *without*
  moving on, which grows the slack by exactly the late frame's lateness.
- **Gaps.** A missing frame with later ones present is lost: Opus rebuilds it from the next
  packet's FEC when that is here, else Opus PLC; PCM fades out. Concealment fades to silence
  within ``plc_frames``. Every join that is not the codec's own continuation is crossfaded
  (5 ms raised cosine) from a mirror of what was just played, so nothing clicks.

Threads: ``push`` runs on the gevent hub, ``pull`` on the playout clock (a PortAudio callback
thread, or a greenlet). Shared state sits behind a *native* lock held only for dict/deque
bookkeeping (microseconds, no I/O, no decoding); decoding and all output state belong to the
single pulling thread. Counters are written by one side each, so snapshots need no lock. No
logging from ``pull`` (a gevent-patched logging lock must not be taken on a foreign thread):
``log_changes`` is called from the hub instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.audio.codecs import CodecError, Decoder, codec_name, make_decoder
from service.audio.frames import FRAME_MS, FRAME_SAMPLES

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
XFADE = 80  # samples: 5 ms
_RAMP = (0.5 - 0.5 * np.cos(np.pi * (np.arange(XFADE) + 0.5) / XFADE)).astype(np.float32)
_FADE_OUT = np.linspace(1.0, 0.0, FRAME_SAMPLES, dtype=np.float32)
BURST_GAP_S = 0.004  # arrivals closer than this came in one burst
QUIET_RMS = 300.0  # about -40 dBFS: a pause in speech, where a dropped frame goes unheard


def _native_lock() -> Any:
    """A real OS lock even under gevent's monkey-patching: the pulling thread is not a
    greenlet, and a gevent lock taken from a foreign thread is unsafe."""
    try:
        from gevent.monkey import get_original

        return get_original("_thread", "allocate_lock")()
    except ImportError:  # pragma: no cover - gevent is a dependency
        import _thread

        return _thread.allocate_lock()


@dataclass(slots=True)
class _Packet:
    codec: str
    payload: bytes
    capture_us: int


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


LATENCY_BIN_MS = 0.5
LATENCY_BINS = 4000  # 0-2 s; slower frames share the last bin


def latency_summary(hist: np.ndarray) -> dict[str, float | int]:
    """Percentiles (upper bin edges, so never flattering) of a latency histogram."""
    n = int(hist.sum())
    if n == 0:
        return {"n": 0}
    cumulative = np.cumsum(hist)

    def edge(q: float) -> float:
        return round(float(np.searchsorted(cumulative, q * n) + 1) * LATENCY_BIN_MS, 1)

    return {
        "n": n,
        "p50": edge(0.50),
        "p95": edge(0.95),
        "p99": edge(0.99),
        "max": round(float(np.flatnonzero(hist)[-1] + 1) * LATENCY_BIN_MS, 1),
    }


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
        self.quantile = jitter_quantile
        self.plc_frames = max(1, plc_frames)
        self._clock = clock
        self._wall = wall_clock
        self._lock = _native_lock()

        # Shared (under the lock): what waits to be played and where playing stands.
        self._packets: dict[int, _Packet] = {}
        self._next: int | None = None  # extended sequence number due next
        self._newest: int | None = None
        # Push side only (the hub).
        self._last_ext: int | None = None
        self._last_arrival: float | None = None
        self._transit: deque[float] = deque(maxlen=max(10, round(jitter_window_s / FRAME_S)))
        self._base = 0.0  # earliest schedule: min(arrival - seq·20 ms) over the window
        self._jitter = 0.0  # seconds; read by the puller (a float store is atomic)
        self.frames_received = 0
        self.frames_dropped_late = 0
        self.frames_dropped_overflow = 0
        self.frames_duplicate = 0
        self.frames_rejected = 0
        self.resyncs = 0
        # Pull side only (the playout clock).
        self._decoders: dict[str, Decoder] = {}
        self._codec = "pcm16"  # of the last frame played: who conceals the next gap
        self._prev = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._join = False  # the next real frame is not the continuation of _prev
        self._plc_run = 0
        self._underrun = False
        self._surplus_since: float | None = None
        self._started = False
        self.frames_played = 0
        self.frames_concealed = 0
        self.frames_fec = 0
        self.frames_silence = 0
        self.frames_dropped_catchup = 0
        self.frames_undecodable = 0
        self.underruns = 0
        self._latency_ms: deque[float] = deque(maxlen=latency_ring)
        # Every frame of the call, in LATENCY_BIN_MS bins: percentiles over a whole call
        # (hours) in constant memory, which the recent-frames ring cannot give.
        self._latency_hist = np.zeros(LATENCY_BINS + 1, dtype=np.int64)
        self._logged: dict[str, int] = {}

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
        ext = self._extend(seq)
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
            self._packets[ext] = _Packet(name, bytes(payload), int(capture_time_us))
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
            self._transit.clear()
            self._last_arrival = None
            log.warning("playout: sequence jumped to %d; buffer restarted", seq)
        # A frame that lands right behind the previous one queued behind it (TCP delivers in
        # order): its lateness is its leader's, already counted. Counting every frame of a
        # burst would let one stall dominate the quantile for the whole window.
        if self._last_arrival is None or now - self._last_arrival > BURST_GAP_S:
            self._transit.append(now - ext * FRAME_S)
            self._update_jitter()
        self._last_arrival = now
        return True

    def _extend(self, seq: int) -> int:
        """u32 wire sequence numbers to an unbounded count (wraps after 994 days at 50/s,
        but a peer may start anywhere)."""
        if self._last_ext is None:
            ext = seq
        else:
            delta = (seq - self._last_ext) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32
            ext = self._last_ext + delta
        if self._last_ext is None or ext > self._last_ext:
            self._last_ext = ext
        return ext

    def _update_jitter(self) -> None:
        values = np.fromiter(self._transit, dtype=np.float64, count=len(self._transit))
        base = float(values.min())
        self._jitter = float(np.quantile(values, self.quantile)) - base
        self._base = base

    # -- the playout side ---------------------------------------------------------------

    def pull(self) -> np.ndarray:
        """The next 20 ms frame, int16. Never blocks (beyond the bookkeeping lock) and never
        raises: call it from exactly one thread, once per 20 ms of audio played."""
        try:
            return self._pull()
        except Exception:  # a playout clock must keep ticking whatever a frame holds
            self.frames_undecodable += 1
            self._join = True
            return self._emit(np.zeros(FRAME_SAMPLES, dtype=np.int16))

    def _target_s(self) -> float:
        return min(self._jitter, self.max_delay_s - FRAME_S)

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
                surplus = now - (self._base + nxt * FRAME_S) - target
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
            return self._conceal(None, started=self._started)
        if action == "underrun":
            if not self._underrun:
                self._underrun = True
                self.underruns += 1
            return self._conceal(None, started=True)
        self._underrun = False
        if action == "lost":
            return self._conceal(follower, started=True, lost=True)
        assert packet is not None
        if skipped:
            self.frames_dropped_catchup += skipped
            self._join = True  # the decoder never saw the skipped frames
        self._started = True
        pcm = self._decode(packet)
        if pcm is None:
            return self._conceal(None, started=True)
        if surplus > FRAME_S + 0.005:
            if self._surplus_since is None:
                self._surplus_since = now
            forced = surplus > 3 * FRAME_S or now - self._surplus_since > 1.0
            if forced or _rms(pcm) < QUIET_RMS:
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
            if packet is not None:
                self._next = nxt + 1
        if packet is None:
            return None
        pcm = self._decode(packet)
        self.frames_dropped_catchup += 1
        if pcm is None:
            return self._conceal(None, started=True)
        self._record_latency(packet)
        self.frames_played += 1
        continuation = self._prev[::-1] if self._join else skipped_pcm
        self._join = False
        return self._crossfade(continuation, pcm)

    def _decode(self, packet: _Packet) -> np.ndarray | None:
        decoder = self._decoders.get(packet.codec)
        if decoder is None:
            decoder = self._decoders[packet.codec] = make_decoder(packet.codec)
        self._codec = packet.codec
        try:
            return decoder.decode(packet.payload)
        except CodecError:
            self.frames_undecodable += 1
            return None

    def _conceal(
        self, follower: _Packet | None, *, started: bool, lost: bool = False
    ) -> np.ndarray:
        """A frame for a gap: Opus FEC/PLC (fading to silence over plc_frames), a PCM fade
        from a mirror of the last output, or silence."""
        decoder = self._decoders.get(self._codec)
        run = self._plc_run
        self._plc_run += 1
        self._join = True
        if not started:
            self.frames_silence += 1
            return self._emit(np.zeros(FRAME_SAMPLES, dtype=np.int16), concealed=True)
        if decoder is not None and decoder.conceals and run < self.plc_frames:
            fec = lost and follower is not None and follower.codec == self._codec
            pcm = decoder.conceal(follower.payload if fec and follower else None)
            self.frames_concealed += 1
            if fec:
                self.frames_fec += 1
                self._plc_run = 0
                self._join = False  # the decoder carries on from its own FEC frame
                return self._emit(pcm, concealed=True)
            gain = np.linspace(
                1 - run / self.plc_frames, 1 - (run + 1) / self.plc_frames, FRAME_SAMPLES
            )
            return self._emit(_to_int16(pcm * gain), concealed=True)
        if run == 0 and np.any(self._prev):
            self.frames_concealed += 1
            return self._emit(_to_int16(self._prev[::-1] * _FADE_OUT), concealed=True)
        self.frames_silence += 1
        return self._emit(np.zeros(FRAME_SAMPLES, dtype=np.int16), concealed=True)

    def _crossfade(self, continuation: np.ndarray, pcm: np.ndarray) -> np.ndarray:
        out = pcm.astype(np.float32)
        out[:XFADE] = continuation[:XFADE] * (1 - _RAMP) + out[:XFADE] * _RAMP
        return _to_int16(out)

    def _emit(
        self, pcm: np.ndarray, packet: _Packet | None = None, concealed: bool = False
    ) -> np.ndarray:
        if not concealed:
            if self._join:
                pcm = self._crossfade(self._prev[::-1], pcm)
                self._join = False
            self._plc_run = 0
            if packet is not None:
                self._record_latency(packet)
                self.frames_played += 1
        self._prev = pcm
        return pcm

    def _record_latency(self, packet: _Packet) -> None:
        ms = (self._wall() - packet.capture_us / 1e6) * 1000
        self._latency_ms.append(ms)
        self._latency_hist[min(LATENCY_BINS, max(0, int(ms / LATENCY_BIN_MS)))] += 1

    # -- figures ------------------------------------------------------------------------

    def latencies_ms(self) -> list[float]:
        """Capture-to-playout delay of recent frames (wall clocks of sender and receiver;
        meaningful on one host or with synchronised clocks)."""
        return list(self._latency_ms)

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            first = self._next if self._next is not None else min(self._packets, default=None)
            newest = self._newest
        depth = 0 if first is None or newest is None else max(0, newest - first + 1)
        latency = latency_summary(self._latency_hist)
        return {
            "target_ms": round((self._target_s() + FRAME_S) * 1000, 1),
            "depth_ms": depth * FRAME_MS,
            "jitter_ms": round(self._jitter * 1000, 1),
            "frames_received": self.frames_received,
            "frames_played": self.frames_played,
            "frames_concealed": self.frames_concealed,
            "frames_fec": self.frames_fec,
            "frames_silence": self.frames_silence,
            "frames_dropped_late": self.frames_dropped_late,
            "frames_dropped_overflow": self.frames_dropped_overflow,
            "frames_dropped_catchup": self.frames_dropped_catchup,
            "frames_duplicate": self.frames_duplicate,
            "frames_rejected": self.frames_rejected,
            "frames_undecodable": self.frames_undecodable,
            "underruns": self.underruns,
            "resyncs": self.resyncs,
            "latency_ms": latency,
        }

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
                self._jitter * 1000,
            )
