"""Call audio codecs: raw PCM16 and Opus, one 20 ms call frame in, one wire payload out.

Opus goes through ``opuslib`` (ctypes over Debian's ``libopus0``): opuslib creates the codec
states and sets the encoder's controls; encoding and decoding call libopus directly on numpy
buffers, which spares a Python list per frame and lets a decoder run PLC (a NULL packet),
which opuslib's wrapper cannot express.

Why these Opus settings: speech at the call's 16 kHz rate is what SILK's wideband mode is
built for (``voip``, signal ``voice``, bandwidth capped at wideband), 16-24 kbit/s keeps it
clear, and in-band FEC (with an expected loss percentage, without which libopus sends none)
lets the playout buffer rebuild a lost frame from the one after it.

Measured with libopus 1.3.1 on the speech set (tests/test_codecs.py): SILK adds its FEC copy
to wideband speech only from about 22 kbit/s at 5 % expected loss; at 20 kbit/s it needs
7-10 % and then drops to mediumband (6 kHz) to make room, and at 16 kbit/s it sends none.
Hence the default of 24 kbit/s with 5 %: wideband *and* FEC (FEC-rebuilt lost frames
~9 dB SNR against the clean decode, PLC ~1.5 dB). Lower bitrates stay wideband, without FEC.

A ``Decoder`` is stateful and single-threaded: whoever decodes one stream (the playout
clock) owns it. The session's own uses (a remote-speech segmenter) get their own decoder.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import numpy as np

from service.codec_table import (
    LABELS,
    OPUS_BITRATE_MAX,
    OPUS_BITRATE_MIN,
    OPUS_FRAME_MS,
    OPUS_MAX_PACKET,
    PCM16_FRAME_BYTES,
    Codec,
)
from service.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE

__all__ = [
    "CODECS",
    "CodecError",
    "Decoder",
    "Encoder",
    "OpusDecoder",
    "OpusEncoder",
    "Pcm16Decoder",
    "Pcm16Encoder",
    "codec_name",
    "make_decoder",
    "make_encoder",
]

CODECS = LABELS  # the names and limits live in the one table, service/codec_table.py
OPUS_BITRATE_DEFAULT = 24_000  # an encoder made without a bitrate (a call passes its own)
_OPUS_BANDWIDTH_WIDEBAND = 1103
_OPUS_OK = 0


class CodecError(ValueError):
    """A codec that cannot be built as asked, or a payload it cannot decode."""


def codec_name(codec: str | Any) -> str:
    """ "pcm16"/"opus" from a name or from the wire's ``Codec`` enum (by its member name),
    so callers pass whatever they hold without a lookup table."""
    if isinstance(codec, Codec):
        return codec.label
    name = codec if isinstance(codec, str) else getattr(codec, "name", str(codec))
    try:
        return Codec.named(name).label
    except ValueError as exc:
        raise CodecError(str(exc)) from None


class Encoder(Protocol):
    name: str

    def encode(self, pcm: np.ndarray) -> bytes:
        """One 20 ms int16 frame (FRAME_SAMPLES) to one wire payload."""
        ...


class Decoder(Protocol):
    name: str

    def decode(self, payload: bytes) -> np.ndarray:
        """One payload to one 20 ms int16 frame; CodecError if it is not a valid payload."""
        ...

    def conceal(self, next_payload: bytes | None = None) -> np.ndarray:
        """A stand-in for a frame that never came. With ``next_payload`` (the frame after
        the missing one) a codec with FEC rebuilds the missing frame from it."""
        ...

    @property
    def conceals(self) -> bool:
        """True if ``conceal`` makes a real estimate (PLC), False if it can only give silence."""
        ...


def _check_frame(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16 or pcm.shape != (FRAME_SAMPLES,):
        raise CodecError(f"expected {FRAME_SAMPLES} int16 samples, got {pcm.dtype} {pcm.shape}")
    return np.ascontiguousarray(pcm)


# --- PCM16 ---------------------------------------------------------------------------------------


class Pcm16Encoder:
    name = "pcm16"

    def encode(self, pcm: np.ndarray) -> bytes:
        return _check_frame(pcm).astype("<i2", copy=False).tobytes()


class Pcm16Decoder:
    name = "pcm16"
    conceals = False

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) != PCM16_FRAME_BYTES:
            raise CodecError(f"PCM16 frame of {len(payload)} bytes; expected {PCM16_FRAME_BYTES}")
        return np.frombuffer(payload, dtype="<i2").astype(np.int16)

    def conceal(self, next_payload: bytes | None = None) -> np.ndarray:
        return np.zeros(FRAME_SAMPLES, dtype=np.int16)


# --- Opus ----------------------------------------------------------------------------------------


def _opuslib() -> Any:
    try:
        import opuslib
        import opuslib.api.decoder
        import opuslib.api.encoder
    except Exception as exc:  # opuslib raises a bare Exception when libopus is missing
        raise CodecError(
            f"Opus is unavailable: {exc} (Debian/Ubuntu: apt-get install libopus0)"
        ) from None
    return opuslib


_int16_p = ctypes.POINTER(ctypes.c_int16)


def _libopus() -> Any:
    """libopus's own functions with the signatures we call them by (set once)."""
    lib = _opuslib().api.libopus
    if not getattr(lib, "_im_prototyped", False):
        lib.opus_encode.argtypes = (ctypes.c_void_p, _int16_p, ctypes.c_int, ctypes.c_char_p,
                                    ctypes.c_int32)  # fmt: skip
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_decode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, _int16_p,
                                    ctypes.c_int, ctypes.c_int)  # fmt: skip
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_strerror.argtypes = (ctypes.c_int,)
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_repacketizer_create.restype = ctypes.c_void_p
        lib.opus_repacketizer_init.argtypes = (ctypes.c_void_p,)
        lib.opus_repacketizer_init.restype = ctypes.c_void_p
        lib.opus_repacketizer_cat.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32)
        lib.opus_repacketizer_cat.restype = ctypes.c_int
        lib.opus_repacketizer_out.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32)
        lib.opus_repacketizer_out.restype = ctypes.c_int32
        lib.opus_repacketizer_destroy.argtypes = (ctypes.c_void_p,)
        lib._im_prototyped = True
    return lib


def _opus_error(lib: Any, code: int) -> str:
    return (lib.opus_strerror(code) or b"?").decode(errors="replace")


class OpusEncoder:
    """20 ms call frames to Opus packets (VOIP, voice, wideband, VBR, in-band FEC).

    ``frame_ms=10`` codes each call frame as two 10 ms Opus frames joined into one packet
    (RFC 6716 code 1/2, via libopus's repacketizer), so the wire still carries one payload per
    20 ms frame and any Opus decoder plays it. It does not lower the call's latency (that
    would need 10 ms call frames); it trades some bitrate for finer coding of transients.
    """

    name = "opus"

    def __init__(
        self,
        bitrate: int = OPUS_BITRATE_DEFAULT,
        frame_ms: int = 20,
        *,
        fec: bool = True,
        expected_loss_pct: int = 5,
        complexity: int = 10,
    ) -> None:
        if not OPUS_BITRATE_MIN <= bitrate <= OPUS_BITRATE_MAX:
            raise CodecError(
                f"Opus bitrate must be {OPUS_BITRATE_MIN}-{OPUS_BITRATE_MAX} bit/s, got {bitrate}"
            )
        if frame_ms not in OPUS_FRAME_MS:
            raise CodecError(f"Opus frame must be 10 or 20 ms, got {frame_ms}")
        if not 0 <= expected_loss_pct <= 100 or not 0 <= complexity <= 10:
            raise CodecError("expected_loss_pct must be 0-100 and complexity 0-10")
        opuslib = _opuslib()
        self._lib = _libopus()
        self._enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
        ctl, enc_ctl = opuslib.api.ctl, opuslib.api.encoder.encoder_ctl
        # Set through encoder_ctl, not opuslib's properties: its inband_fec setter drops
        # the value (opuslib 3.0.1). Each setting is read back so a silent no-op shows.
        wanted = [
            ("bitrate", ctl.set_bitrate, ctl.get_bitrate, bitrate),
            ("signal", ctl.set_signal, ctl.get_signal, opuslib.SIGNAL_VOICE),
            (
                "max_bandwidth",
                ctl.set_max_bandwidth,
                ctl.get_max_bandwidth,
                _OPUS_BANDWIDTH_WIDEBAND,
            ),
            ("vbr", ctl.set_vbr, ctl.get_vbr, 1),
            ("complexity", ctl.set_complexity, ctl.get_complexity, complexity),
            ("inband_fec", ctl.set_inband_fec, ctl.get_inband_fec, int(fec)),
            (
                "packet_loss_perc",
                ctl.set_packet_loss_perc,
                ctl.get_packet_loss_perc,
                expected_loss_pct if fec else 0,
            ),
        ]
        for label, setter, getter, value in wanted:
            enc_ctl(self._enc.encoder_state, setter, value)
            if enc_ctl(self._enc.encoder_state, getter) != value:
                raise CodecError(f"libopus did not take {label}={value}")
        self._state = ctypes.cast(self._enc.encoder_state, ctypes.c_void_p)
        self.bitrate = bitrate
        self.frame_ms = frame_ms
        self._sub = SAMPLE_RATE * frame_ms // 1000
        self._out = ctypes.create_string_buffer(OPUS_MAX_PACKET * (FRAME_MS // frame_ms))
        self._parts = [ctypes.create_string_buffer(OPUS_MAX_PACKET) for _ in range(2)]
        self._rp = self._lib.opus_repacketizer_create() if frame_ms != FRAME_MS else None

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = _check_frame(pcm)
        lib = self._lib
        if self._rp is None:
            n = lib.opus_encode(self._state, pcm.ctypes.data_as(_int16_p), FRAME_SAMPLES,
                                self._out, OPUS_MAX_PACKET)  # fmt: skip
            if n < 0:
                raise CodecError(f"Opus encode failed: {_opus_error(lib, n)}")
            return self._out.raw[:n]
        lib.opus_repacketizer_init(self._rp)
        for i, part in enumerate(self._parts):
            chunk = pcm[i * self._sub : (i + 1) * self._sub]
            n = lib.opus_encode(self._state, chunk.ctypes.data_as(_int16_p), self._sub, part,
                                OPUS_MAX_PACKET)  # fmt: skip
            if n < 0:
                raise CodecError(f"Opus encode failed: {_opus_error(lib, n)}")
            # The repacketizer keeps a pointer into `part`, which lives as long as self.
            err = lib.opus_repacketizer_cat(self._rp, part, n)
            if err != _OPUS_OK:
                raise CodecError(f"Opus repacketizing failed: {_opus_error(lib, err)}")
        n = lib.opus_repacketizer_out(self._rp, self._out, len(self._out))
        if n < 0:
            raise CodecError(f"Opus repacketizing failed: {_opus_error(lib, n)}")
        return self._out.raw[:n]

    def __del__(self) -> None:
        rp = getattr(self, "_rp", None)
        if rp is not None:
            self._lib.opus_repacketizer_destroy(rp)
            self._rp = None


class OpusDecoder:
    """Opus packets to 20 ms frames, with PLC and FEC for frames that never came."""

    name = "opus"
    conceals = True

    def __init__(self) -> None:
        opuslib = _opuslib()
        self._lib = _libopus()
        self._dec = opuslib.Decoder(SAMPLE_RATE, 1)
        self._state = ctypes.cast(self._dec.decoder_state, ctypes.c_void_p)

    def _run(self, payload: bytes | None, fec: bool) -> np.ndarray:
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        size = len(payload) if payload else 0
        buf = out.ctypes.data_as(_int16_p)
        n = self._lib.opus_decode(self._state, payload, size, buf, FRAME_SAMPLES, int(fec))
        if n < 0:
            raise CodecError(f"Opus decode failed: {_opus_error(self._lib, n)}")
        if n != FRAME_SAMPLES:  # a valid packet of another duration: not a call frame
            raise CodecError(f"Opus packet holds {n} samples; a call frame is {FRAME_SAMPLES}")
        return out

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            raise CodecError("empty Opus packet")
        return self._run(payload, False)

    def conceal(self, next_payload: bytes | None = None) -> np.ndarray:
        if next_payload:
            try:
                return self._run(next_payload, True)
            except CodecError:
                pass  # a bad next packet: fall back to plain PLC
        return self._run(None, False)


def make_encoder(codec: str | Any = "pcm16", **options: Any) -> Encoder:
    """An encoder by name (or wire enum); options go to OpusEncoder (bitrate, frame_ms, ...)."""
    name = codec_name(codec)
    if name == "opus":
        return OpusEncoder(**options)
    if options:
        raise CodecError(f"pcm16 takes no options, got {sorted(options)}")
    return Pcm16Encoder()


def make_decoder(codec: str | Any) -> Decoder:
    return OpusDecoder() if codec_name(codec) == "opus" else Pcm16Decoder()
