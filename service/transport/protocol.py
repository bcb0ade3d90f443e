"""The call wire protocol: typed, length-prefixed messages over one TCP stream.

Pure functions over bytes, no sockets, so every rule here is testable in isolation and
the parser can be fuzzed.

Framing: ``u8 type | u32 big-endian body length | body``. The length is checked against a
hard cap *before* any body byte is buffered, so a hostile peer cannot make us allocate more
than ``MAX_BODY`` per connection. Control messages (hello, transcript, bye) carry JSON
objects validated field by field; audio carries a fixed binary header and the codec
payload. Nothing is ever unpickled or evaluated.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

PROTOCOL_NAME = "intellimeet-call"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BI")
MAX_BODY = 16 * 1024  # a 20 ms PCM16 frame is 652 bytes; a transcript a few hundred
AUDIO_HEADER = struct.Struct(">BIQ")  # codec, sequence number, capture time (µs since epoch)
PCM16_FRAME_BYTES = 640  # 20 ms of 16 kHz mono 16-bit: the only PCM frame size on the wire
MAX_TEXT = 4000  # characters of one transcript segment
MAX_REASON = 200


class ProtocolError(ValueError):
    """The peer sent something this protocol does not allow; the connection must close."""


class MessageType(IntEnum):
    HELLO = 1
    AUDIO = 2
    TRANSCRIPT = 3
    BYE = 4


class Codec(IntEnum):
    PCM16 = 0


CODEC_NAMES = {Codec.PCM16: "pcm16"}


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way. The dialer's carries the call token; the listener answers
    with its own hello (token empty) once the token checked out."""

    token: str
    transcribes: bool
    codecs: tuple[str, ...] = ("pcm16",)
    node: str = ""
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Audio:
    seq: int
    capture_time_us: int
    payload: bytes
    codec: Codec = Codec.PCM16


@dataclass(frozen=True, slots=True)
class Transcript:
    """A final segment the sender transcribed from its own microphone."""

    no: int  # the sender's running segment number, unique per call and speaker
    start: float
    end: float
    text: str
    language: str | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str


Message = Hello | Audio | Transcript | Bye


def encode(message: Message) -> bytes:
    if isinstance(message, Audio):
        kind = MessageType.AUDIO
        body = AUDIO_HEADER.pack(message.codec, message.seq, message.capture_time_us)
        body += message.payload
    elif isinstance(message, Hello):
        kind = MessageType.HELLO
        body = _json(
            {
                "protocol": PROTOCOL_NAME,
                "version": message.version,
                "token": message.token,
                "transcribes": message.transcribes,
                "codecs": list(message.codecs),
                "node": message.node,
            }
        )
    elif isinstance(message, Transcript):
        kind = MessageType.TRANSCRIPT
        body = _json({f: getattr(message, f) for f in Transcript.__slots__})
    elif isinstance(message, Bye):
        kind = MessageType.BYE
        body = _json({"reason": message.reason})
    else:  # pragma: no cover - guarded by the type checker
        raise TypeError(f"not a protocol message: {message!r}")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{kind.name} body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(kind, len(body)) + body


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode(kind: int, body: bytes) -> Message:
    """Parse one message body; raise ProtocolError for anything malformed."""
    try:
        kind = MessageType(kind)
    except ValueError:
        raise ProtocolError(f"unknown message type {kind}") from None
    if kind is MessageType.AUDIO:
        return _decode_audio(body)
    obj = _parse_object(body, kind)
    if kind is MessageType.HELLO:
        return _decode_hello(obj)
    if kind is MessageType.TRANSCRIPT:
        return _decode_transcript(obj)
    return Bye(reason=_str(obj, "reason", MAX_REASON))


def _decode_audio(body: bytes) -> Audio:
    if len(body) < AUDIO_HEADER.size:
        raise ProtocolError(f"audio message of {len(body)} bytes is shorter than its header")
    codec, seq, capture_us = AUDIO_HEADER.unpack_from(body)
    try:
        codec = Codec(codec)
    except ValueError:
        raise ProtocolError(f"unknown audio codec {codec}") from None
    payload = body[AUDIO_HEADER.size :]
    if codec is Codec.PCM16 and len(payload) != PCM16_FRAME_BYTES:
        raise ProtocolError(
            f"PCM16 frame must carry {PCM16_FRAME_BYTES} bytes (20 ms), got {len(payload)}"
        )
    return Audio(seq=seq, capture_time_us=capture_us, payload=bytes(payload), codec=codec)


def _parse_object(body: bytes, kind: MessageType) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{kind.name} body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{kind.name} body must be a JSON object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _decode_hello(obj: dict[str, Any]) -> Hello:
    if obj.get("protocol") != PROTOCOL_NAME:
        raise ProtocolError(f"not an {PROTOCOL_NAME} hello")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("hello.version must be an integer")
    codecs = obj.get("codecs", [])
    if (
        not isinstance(codecs, list)
        or len(codecs) > 8
        or not all(isinstance(c, str) and len(c) <= 16 for c in codecs)
    ):
        raise ProtocolError("hello.codecs must be a short list of codec names")
    transcribes = obj.get("transcribes")
    if not isinstance(transcribes, bool):
        raise ProtocolError("hello.transcribes must be a boolean")
    return Hello(
        token=_str(obj, "token", 256),
        transcribes=transcribes,
        codecs=tuple(codecs),
        node=_str(obj, "node", 256, required=False) or "",
        version=version,
    )


def _decode_transcript(obj: dict[str, Any]) -> Transcript:
    no = obj.get("no")
    if not isinstance(no, int) or isinstance(no, bool) or not 0 <= no < 2**31:
        raise ProtocolError("transcript.no must be a non-negative integer")
    start, end = _num(obj, "start"), _num(obj, "end")
    if start is None or end is None or not 0 <= start <= end:
        raise ProtocolError("transcript.start and .end must be numbers with 0 <= start <= end")
    language = _str(obj, "language", 16, required=False)
    return Transcript(
        no=no,
        start=start,
        end=end,
        text=_str(obj, "text", MAX_TEXT),
        language=language,
        avg_logprob=_num(obj, "avg_logprob"),
        no_speech_prob=_num(obj, "no_speech_prob"),
        compression_ratio=_num(obj, "compression_ratio"),
    )


def _str(obj: dict[str, Any], key: str, limit: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{key} must be a string of at most {limit} characters")
    return value


def _num(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"{key} must be a finite number")
    return float(value)


@dataclass
class Decoder:
    """Incremental parser: feed it whatever recv() returned, get whole messages back.

    Holds at most one header plus one capped body, so its memory is bounded whatever the
    peer sends.
    """

    max_body: int = MAX_BODY
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > self.max_body:
                raise ProtocolError(f"message of {length} bytes exceeds the {self.max_body} cap")
            if kind not in MessageType._value2member_map_:
                raise ProtocolError(f"unknown message type {kind}")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            out.append(decode(kind, body))
        return out

    @property
    def buffered(self) -> int:
        """Bytes of a partial message still waiting for the rest."""
        return len(self._buf)
