"""One call's recorder: both sides' packets to two Ogg Opus files, from a thread of its own.

Fed from the call's media path without costing it anything: ``local``/``remote`` append to
a bounded deque (atomic under the GIL, never blocks, never yields) and a native OS thread
writes, so neither a slow disk nor an fsync can stall the gevent hub. A queue that
overflows drops the packet (counted); the gap it leaves is filled with silence, so time is
kept either way.

The timeline is the packets' sequence numbers: packet n covers [n·20 ms, (n+1)·20 ms) of
its side of the call, which is the clock that side's transcriber counts in (it is fed one
frame per packet). A missing packet (dropped unsent by the peer, dropped here) becomes a
silent one, so time t in the file is time t in the transcript. A peer cannot make us write
more than the call's wall-clock length of silence: sequence numbers ahead of the clock
(plus slack) are not filled up to.

Opus packets the call already carries are stored as they are (no re-encoding); PCM16
calls are encoded here, in the thread, with the call's Opus settings. The local side's
frames are also kept lossless (FLAC, ``lossless=True``): transcribed from it, the post-call
pass makes measurably fewer errors than from Opus (docs/recordings.md). Pages (and FLAC
frames) reach the disk about every second and are fsync'ed, so a node killed mid-call keeps
all but the last second or two.

A write that fails (a full disk above all) ends the recording with a reason, never the call.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gevent.monkey import get_original

from service.audio.codecs import Encoder, OpusEncoder
from service.codec_table import PCM16_FRAME_BYTES, Codec
from service.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from service.recordings.layout import (
    SPEAKERS,
    Speaker,
    fsync_dir,
    lossless_path,
    recording_path,
)
from service.recordings.ogg import OPUS_RATE, OggOpusWriter
from service.threadhub import start_native_thread

log = logging.getLogger(__name__)

FRAME_48K = OPUS_RATE * FRAME_MS // 1000  # 960: one call frame in granule units
PRE_SKIP = 312  # libopus's lookahead at 16 kHz VOIP (104 samples) in 48 kHz samples
FLUSH_S = 1.0  # a page ends, and reaches the disk, about this often per side
WAKE_S = 0.2  # how often the writer thread looks for packets
MAX_QUEUED = 1000  # packets (both sides): 10 s of a call's audio waiting for the writer
AHEAD_SLACK_FRAMES = 250  # 5 s: how far a side's sequence may run ahead of the clock
RECORD_COMPLEXITY = 5  # as the call's own encoder (calls/media.py)
_sleep: Callable[[float], None] = get_original("time", "sleep")  # the thread's, not gevent's


@dataclass
class Counters:
    """What the recorder did; read by the hub (plain ints, written by the thread)."""

    packets: int = 0
    silence_filled: int = 0  # 20 ms packets of silence written for missing ones
    dropped_queue_full: int = 0
    invalid: int = 0  # Opus payloads libopus would not parse, stored as silence
    out_of_order: int = 0
    bytes_written: int = 0
    lossless_stopped: str | None = None  # why the local FLAC copy ended early (its Opus goes on)


def opus_packet_samples(packet: bytes) -> int:
    """How many 48 kHz samples an Opus packet holds, from its TOC byte (RFC 6716 §3.1);
    0 for one that is malformed there. What keeps the timeline honest: a packet is stored
    only if it is exactly one call frame long."""
    if not packet:
        return 0
    toc = packet[0]
    config, code = toc >> 3, toc & 0x03
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        per_frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        per_frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        per_frame = (120, 240, 480, 960)[config % 4]
    if code == 0:
        frames = 1
    elif code == 1:
        frames = 2 if (len(packet) - 1) % 2 == 0 else 0
    elif code == 2:
        frames = 2 if len(packet) >= 2 else 0
    else:
        frames = packet[1] & 0x3F if len(packet) >= 2 else 0
    return frames * per_frame


class _Track:
    """One side's file; used by the writer thread only."""

    def __init__(self, path: Path, tags: dict[str, str], bitrate: int, t0: float) -> None:
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._ogg = OggOpusWriter(self._file, secrets.randbits(32), PRE_SKIP, SAMPLE_RATE, tags)
        self._bitrate = bitrate
        self._t0 = t0
        self._encoder: Encoder | None = None
        self._silence: bytes | None = None
        self.next_seq = 0
        self.flushed_at = time.monotonic()
        self.sync()

    def _encode(self, pcm: np.ndarray) -> bytes:
        if self._encoder is None:
            self._encoder = OpusEncoder(self._bitrate, fec=False, complexity=RECORD_COMPLEXITY)
        return self._encoder.encode(pcm)

    def _silent_packet(self) -> bytes:
        if self._encoder is not None:  # a PCM16 side: keep its encoder's state continuous
            return self._encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        if self._silence is None:  # a steady-state packet of silence, made once
            encoder = OpusEncoder(self._bitrate, fec=False, complexity=RECORD_COMPLEXITY)
            for _ in range(5):
                self._silence = encoder.encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        assert self._silence is not None
        return self._silence

    def add(self, seq: int, codec: int, payload: bytes, at: float, counters: Counters) -> None:
        if seq < self.next_seq:
            counters.out_of_order += 1
            return
        ahead_limit = int((at - self._t0) * 1000 / FRAME_MS) + AHEAD_SLACK_FRAMES
        gap = max(0, min(seq, ahead_limit) - self.next_seq)
        for _ in range(gap):
            self._ogg.add(self._silent_packet(), FRAME_48K)
        counters.silence_filled += gap
        if codec == Codec.OPUS and opus_packet_samples(payload) == FRAME_48K:
            packet = payload
        elif codec == Codec.PCM16 and len(payload) == PCM16_FRAME_BYTES:
            packet = self._encode(np.frombuffer(payload, dtype="<i2").astype(np.int16))
        else:
            counters.invalid += 1
            packet = self._silent_packet()
        self._ogg.add(packet, FRAME_48K)
        counters.packets += 1
        self.next_seq = seq + 1

    def sync(self, eos: bool = False) -> None:
        """End the page and put it on the disk."""
        self._ogg.flush(eos)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.flushed_at = time.monotonic()

    @property
    def size(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class _LosslessTrack:
    """The local side's frames as FLAC (16 kHz mono, 16 bit); used by the writer thread
    only. On the same timeline as the Opus file: a frame missing from the queue becomes
    silence, and a sequence number far ahead of the clock is not padded up to.

    A failure ends this copy only (``failed`` says why), never the Opus recording beside
    it: libsndfile reports a full disk as a bare "System error.", the Opus files then say
    ``disk_full``. soundfile (and libsndfile with it) is imported here, at the first copy,
    so a platform without it records Opus only."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.failed: str | None = None
        self.next_seq = 0
        self.synced_at = time.monotonic()
        self._t0 = t0
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._sf: Any = None  # a soundfile.SoundFile
        self._guarded(self._open)

    def _open(self) -> None:
        import soundfile

        self._sf = soundfile.SoundFile(
            self.path, "w", samplerate=SAMPLE_RATE, channels=1, format="FLAC", subtype="PCM_16"
        )

    def _guarded(self, step: Callable[[], None]) -> None:
        if self.failed is not None:
            return
        try:
            step()
        except Exception as exc:  # soundfile raises RuntimeError, AssertionError, OSError
            self.failed = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("lossless copy %s stopped: %s", self.path, self.failed)
            self.close()

    def add(self, seq: int, pcm: np.ndarray, at: float) -> None:
        def write() -> None:
            assert self._sf is not None
            ahead_limit = int((at - self._t0) * 1000 / FRAME_MS) + AHEAD_SLACK_FRAMES
            for _ in range(max(0, min(seq, ahead_limit) - self.next_seq)):
                self._sf.write(self._silence)
            self._sf.write(pcm)
            self.next_seq = seq + 1

        if seq >= self.next_seq:
            self._guarded(write)

    def sync(self, eos: bool = False) -> None:
        """Put what libsndfile holds on the disk (sf_write_sync: its write and fsync; the
        samples of libFLAC's unfinished block, under 0.26 s, wait for the next one);
        ``eos``: finish the file, its header then saying how long it is."""

        def flush() -> None:
            assert self._sf is not None
            if not eos:
                self._sf.flush()
                return
            self._sf.close()
            # Its descriptor is gone with it; an fsync of another one of the same file
            # reaches the same data.
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self._guarded(flush)
        self.synced_at = time.monotonic()

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        if self._sf is not None:
            with contextlib.suppress(Exception):
                self._sf.close()


class CallRecorder:
    """Records one call's two sides under ``root`` (see layout.py for where).

    ``stopped`` is None while it records or after a clean close; otherwise why it stopped
    (``disk_full``, ``io_error: ...``, ``deleted``). ``closed`` is True once the thread is
    done and the files are closed."""

    def __init__(self, root: Path, call_id: str, opus_bitrate: int, lossless: bool = False) -> None:
        self.root = Path(root)
        self.call_id = call_id
        self.paths = {s: recording_path(self.root, call_id, s) for s in SPEAKERS}
        self.lossless = lossless  # the local side also as FLAC (local(..., pcm=frame))
        self.counters = Counters()
        self.stopped: str | None = None
        self.closed = False
        self._bitrate = opus_bitrate
        self._queue: deque[tuple[int, int, int, bytes, float, np.ndarray | None]] = deque()
        self._closing = False
        self._t0 = time.monotonic()
        self._started = datetime.now(UTC).isoformat()
        start_native_thread(self._run)

    # -- the hub's side: never blocks ----------------------------------------------------

    def local(self, seq: int, codec: int, payload: bytes, pcm: np.ndarray | None = None) -> None:
        """One frame of this node's own side: ``payload`` as sent, and ``pcm`` (int16,
        one 20 ms frame) as captured, for the lossless copy."""
        self._put(0, seq, codec, payload, pcm if self.lossless else None)

    def remote(self, seq: int, codec: int, payload: bytes) -> None:
        self._put(1, seq, codec, payload, None)

    def _put(self, side: int, seq: int, codec: int, payload: bytes, pcm: np.ndarray | None) -> None:
        if self._closing or self.stopped is not None:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.counters.dropped_queue_full += 1
            return
        self._queue.append((side, seq, int(codec), payload, time.monotonic(), pcm))

    def close(self) -> None:
        """Finish: what is queued is written, the last pages carry EOS. Returns at once."""
        self._closing = True

    def wait_closed(self, timeout: float, sleep: Callable[[float], Any]) -> bool:
        """Wait (with ``sleep``: gevent.sleep on the hub) until the files are closed."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            sleep(0.05)
        return self.closed

    def stop(self, reason: str) -> None:
        """Stop recording now, keeping what is written (e.g. before the audio is deleted)."""
        self.stopped = self.stopped or reason
        self._closing = True

    @property
    def recording(self) -> bool:
        return not self._closing and self.stopped is None and not self.closed

    # -- the writer thread ---------------------------------------------------------------

    def _tags(self, speaker: Speaker) -> dict[str, str]:
        return {"TITLE": f"call {self.call_id} ({speaker})", "DATE": self._started}

    def _run(self) -> None:
        tracks: list[_Track] = []
        flac: _LosslessTrack | None = None
        try:
            folder = self.paths["local"].parent
            folder.mkdir(parents=True, exist_ok=True)
            for speaker in SPEAKERS:
                tracks.append(
                    _Track(self.paths[speaker], self._tags(speaker), self._bitrate, self._t0)
                )
            if self.lossless:
                flac = _LosslessTrack(lossless_path(self.root, self.call_id), self._t0)
            fsync_dir(folder)
            fsync_dir(self.root)
            self._loop(tracks, flac)
        except OSError as exc:
            self.stopped = self.stopped or _reason(exc)
            log.warning("call %s: recording stopped: %s", self.call_id, self.stopped)
        except Exception as exc:  # a bug must end the recording, not the node's thread
            self.stopped = self.stopped or f"failed: {type(exc).__name__}"
            log.exception("call %s: recording failed", self.call_id)
        finally:
            for track in tracks:
                with contextlib.suppress(OSError):
                    track.close()
            if flac is not None:
                flac.close()
                self.counters.lossless_stopped = flac.failed
            self.closed = True

    def _loop(self, tracks: list[_Track], flac: _LosslessTrack | None) -> None:
        counters = self.counters
        while True:
            finishing = self._closing
            while self._queue:
                side, seq, codec, payload, at, pcm = self._queue.popleft()
                tracks[side].add(seq, codec, payload, at, counters)
                if flac is not None and pcm is not None:
                    flac.add(seq, pcm, at)
            if self.stopped is not None:
                return  # stopped from outside: keep what is written, no EOS
            now = time.monotonic()
            for track in tracks:
                if finishing or now - track.flushed_at >= FLUSH_S:
                    track.sync(eos=finishing)
            if flac is not None and (finishing or now - flac.synced_at >= FLUSH_S):
                flac.sync(eos=finishing)
                counters.lossless_stopped = flac.failed
            counters.bytes_written = sum(track.size for track in tracks)
            if flac is not None:
                counters.bytes_written += flac.size
            if finishing:
                return
            _sleep(WAKE_S)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    return f"io_error: {exc.strerror or type(exc).__name__}"


__all__ = ["CallRecorder", "Counters", "opus_packet_samples"]
