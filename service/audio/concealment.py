"""What the playout clock plays: decoded frames joined without clicks, and gaps filled.

The pulling side of a playout buffer (service/audio/playout.py), kept apart from it because
it is a concern of its own with state of its own, all of it owned by the one pulling thread
(no lock): the decoders, the last frame played, whether the next real frame continues it,
and how long concealment has run.

- **Gaps.** A missing frame with later ones present is lost: Opus rebuilds it from the next
  packet's FEC when that is here, else Opus PLC; PCM fades out. Concealment fades to silence
  within ``plc_frames``.
- **Joins.** Every join that is not the codec's own continuation is crossfaded (5 ms raised
  cosine) from a mirror of what was just played, so nothing clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.audio.codecs import CodecError, Decoder, make_decoder
from service.frames import FRAME_SAMPLES

XFADE = 80  # samples: 5 ms
_RAMP = (0.5 - 0.5 * np.cos(np.pi * (np.arange(XFADE) + 0.5) / XFADE)).astype(np.float32)
_FADE_OUT = np.linspace(1.0, 0.0, FRAME_SAMPLES, dtype=np.float32)


@dataclass(slots=True)
class Packet:
    """A received frame, still encoded, as the playout buffer holds it."""

    codec: str
    payload: bytes
    capture_us: int


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def crossfade(continuation: np.ndarray, pcm: np.ndarray) -> np.ndarray:
    out = pcm.astype(np.float32)
    out[:XFADE] = continuation[:XFADE] * (1 - _RAMP) + out[:XFADE] * _RAMP
    return _to_int16(out)


class Concealer:
    """See the module docstring. One per playout buffer; call from its pulling thread only.
    Counters are written here only, so snapshots need no lock."""

    def __init__(self, plc_frames: int) -> None:
        self.plc_frames = max(1, plc_frames)
        self._decoders: dict[str, Decoder] = {}
        self._codec = "pcm16"  # of the last frame played: who conceals the next gap
        self._prev = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self.join = False  # the next real frame is not the continuation of _prev
        self._plc_run = 0
        self.frames_concealed = 0
        self.frames_fec = 0
        self.frames_silence = 0
        self.frames_undecodable = 0

    def decode(self, packet: Packet) -> np.ndarray | None:
        decoder = self._decoders.get(packet.codec)
        if decoder is None:
            decoder = self._decoders[packet.codec] = make_decoder(packet.codec)
        self._codec = packet.codec
        try:
            return decoder.decode(packet.payload)
        except CodecError:
            self.frames_undecodable += 1
            return None

    def conceal(self, follower: Packet | None, *, started: bool, lost: bool = False) -> np.ndarray:
        """A frame for a gap: Opus FEC/PLC (fading to silence over plc_frames), a PCM fade
        from a mirror of the last output, or silence."""
        decoder = self._decoders.get(self._codec)
        run = self._plc_run
        self._plc_run += 1
        self.join = True
        if not started:
            self.frames_silence += 1
            return self._emit_concealed(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        if decoder is not None and decoder.conceals and run < self.plc_frames:
            fec = lost and follower is not None and follower.codec == self._codec
            pcm = decoder.conceal(follower.payload if fec and follower else None)
            self.frames_concealed += 1
            if fec:
                self.frames_fec += 1
                self._plc_run = 0
                self.join = False  # the decoder carries on from its own FEC frame
                return self._emit_concealed(pcm)
            gain = np.linspace(
                1 - run / self.plc_frames, 1 - (run + 1) / self.plc_frames, FRAME_SAMPLES
            )
            return self._emit_concealed(_to_int16(pcm * gain))
        if run == 0 and np.any(self._prev):
            self.frames_concealed += 1
            return self._emit_concealed(_to_int16(self._prev[::-1] * _FADE_OUT))
        self.frames_silence += 1
        return self._emit_concealed(np.zeros(FRAME_SAMPLES, dtype=np.int16))

    def splice(self, skipped_pcm: np.ndarray, pcm: np.ndarray) -> np.ndarray:
        """``pcm`` in place of a dropped ``skipped_pcm``, crossfading from the skipped frame
        (which is what would have followed the last output seamlessly)."""
        continuation = self._prev[::-1] if self.join else skipped_pcm
        self.join = False
        return crossfade(continuation, pcm)

    def emit(self, pcm: np.ndarray) -> np.ndarray:
        """``pcm`` as played: crossfaded in after a join, and remembered for the next one."""
        if self.join:
            pcm = crossfade(self._prev[::-1], pcm)
            self.join = False
        self._plc_run = 0
        self._prev = pcm
        return pcm

    def _emit_concealed(self, pcm: np.ndarray) -> np.ndarray:
        self._prev = pcm
        return pcm
