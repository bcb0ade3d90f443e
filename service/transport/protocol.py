"""The call wire protocol: typed, length-prefixed messages over one TCP stream.

Pure functions over bytes, no sockets, so every rule here is testable in isolation and
the parser can be fuzzed. The messages themselves are in messages.py (re-exported here).

Framing: ``u8 type | u32 big-endian body length | body``. The length is checked against a
hard cap *before* any body byte is buffered, so a hostile peer cannot make us allocate more
than ``MAX_BODY`` per connection. Control messages (hello, auth, transcript, bye) carry JSON
objects validated field by field; audio and keepalive carry fixed binary headers. Nothing is
ever unpickled or evaluated.

Version 2 handshake (the call token never crosses the wire; see ``handshake.py``)::

    dialer   -> HELLO {nonce_d, codecs, ...}
    listener -> HELLO {nonce_l, codecs, ...}
    dialer   -> AUTH  {proof = HMAC(token, "dialer"   || H)}
    listener -> AUTH  {proof = HMAC(token, "listener" || H)}    (or BYE "rejected: ...")

where H hashes both hello bodies exactly as sent.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from service.codec_table import OPUS_MAX_PACKET, PCM16_FRAME_BYTES, Codec
from service.transport.messages import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Audio,
    Auth,
    Bye,
    Hello,
    Message,
    Ping,
    Pong,
    Transcript,
    choose_codec,
)

__all__ = [
    "AUDIO_HEADER",
    "HEADER",
    "KEEPALIVE",
    "MAX_BODY",
    "MAX_REASON",
    "MAX_TEXT",
    "NONCE_HEX",
    "OPUS_MAX_PACKET",
    "PCM16_FRAME_BYTES",
    "PROOF_HEX",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "Audio",
    "Auth",
    "Bye",
    "Codec",
    "Decoder",
    "Hello",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ProtocolError",
    "Transcript",
    "choose_codec",
    "decode",
    "encode",
    "hello_body",
]

HEADER = struct.Struct(">BI")
MAX_BODY = 16 * 1024  # a 20 ms PCM16 frame is 652 bytes; a transcript a few hundred
AUDIO_HEADER = struct.Struct(">BIQ")  # codec, sequence number, capture time (µs since epoch)
MAX_TEXT = 4000  # characters of one transcript segment
MAX_REASON = 200
NONCE_HEX = 64  # 32 random bytes, hex
PROOF_HEX = 64  # an HMAC-SHA256, hex
KEEPALIVE = struct.Struct(">IQ")  # ping id, sender's clock (µs) echoed back in the pong


class ProtocolError(ValueError):
    """The peer sent something this protocol does not allow; the connection must close."""


class MessageType(IntEnum):
    HELLO = 1
    AUDIO = 2
    TRANSCRIPT = 3
    BYE = 4
    AUTH = 5
    PING = 6
    PONG = 7


_TLS_RECORD_HANDSHAKE = 0x16  # first byte of a TLS ClientHello


def hello_body(hello: Hello) -> bytes:
    """The body of ``hello`` exactly as it was (or will be) on the wire."""
    return hello.raw or encode(hello)[HEADER.size :]


def encode(message: Message) -> bytes:
    if isinstance(message, Audio):
        kind = MessageType.AUDIO
        body = AUDIO_HEADER.pack(message.codec, message.seq, message.capture_time_us)
        body += message.payload
    elif isinstance(message, Ping | Pong):
        kind = MessageType.PING if isinstance(message, Ping) else MessageType.PONG
        body = KEEPALIVE.pack(message.id, message.sent_us)
    elif isinstance(message, Hello):
        kind = MessageType.HELLO
        body = _json(
            {
                "protocol": PROTOCOL_NAME,
                "version": message.version,
                "node": message.node,
                "transcribes": message.transcribes,
                "codecs": list(message.codecs),
                "nonce": message.nonce,
                # Only when known, so a hello that does not say stays byte for byte as before.
                **({} if message.records is None else {"records": message.records}),
            }
        )
    elif isinstance(message, Auth):
        kind = MessageType.AUTH
        body = _json({"proof": message.proof})
    elif isinstance(message, Transcript):
        kind = MessageType.TRANSCRIPT
        body = _json({f: getattr(message, f) for f in Transcript.__slots__})
    elif isinstance(message, Bye):
        kind = MessageType.BYE
        body = _json({"reason": message.reason, **({"pending": True} if message.pending else {})})
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
        raise ProtocolError(_unknown_type(kind)) from None
    if kind is MessageType.AUDIO:
        return _decode_audio(body)
    if kind in (MessageType.PING, MessageType.PONG):
        if len(body) != KEEPALIVE.size:
            raise ProtocolError(f"{kind.name} body must be {KEEPALIVE.size} bytes, got {len(body)}")
        ping_id, sent_us = KEEPALIVE.unpack(body)
        return (Ping if kind is MessageType.PING else Pong)(id=ping_id, sent_us=sent_us)
    obj = _parse_object(body, kind)
    if kind is MessageType.HELLO:
        return _decode_hello(obj, body)
    if kind is MessageType.AUTH:
        return Auth(proof=_hex(obj, "proof", PROOF_HEX))
    if kind is MessageType.TRANSCRIPT:
        return _decode_transcript(obj)
    pending = obj.get("pending", False)
    if not isinstance(pending, bool):
        raise ProtocolError("bye.pending must be a boolean")
    return Bye(reason=_str(obj, "reason", MAX_REASON), pending=pending)


def _unknown_type(kind: int) -> str:
    if kind == _TLS_RECORD_HANDSHAKE:
        return f"unknown message type {kind} (a TLS handshake? this side is not using TLS)"
    return f"unknown message type {kind}"


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
    if codec is Codec.OPUS and not 1 <= len(payload) <= OPUS_MAX_PACKET:
        raise ProtocolError(f"Opus packet must carry 1-{OPUS_MAX_PACKET} bytes, got {len(payload)}")
    return Audio(seq=seq, capture_time_us=capture_us, payload=bytes(payload), codec=codec)


def _parse_object(body: bytes, kind: MessageType) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # nesting past the limit
        raise ProtocolError(f"{kind.name} body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{kind.name} body must be a JSON object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _decode_hello(obj: dict[str, Any], body: bytes) -> Hello:
    if obj.get("protocol") != PROTOCOL_NAME:
        raise ProtocolError(f"not an {PROTOCOL_NAME} hello")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("hello.version must be an integer")
    codecs = obj.get("codecs", [])
    if (
        not isinstance(codecs, list)
        or len(codecs) > 8
        or not all(isinstance(c, str) and len(c) <= 16 and _is_text(c) for c in codecs)
    ):
        raise ProtocolError("hello.codecs must be a short list of codec names")
    transcribes = obj.get("transcribes")
    if not isinstance(transcribes, bool):
        raise ProtocolError("hello.transcribes must be a boolean")
    records = obj.get("records")  # absent: a node from before recordings (unknown)
    if records is not None and not isinstance(records, bool):
        raise ProtocolError("hello.records must be a boolean")
    # A hello of another version is still parsed (without a nonce) so that the peer can
    # be told which version it speaks; the session refuses it.
    nonce = obj.get("nonce", "")
    if version == PROTOCOL_VERSION or nonce != "":
        nonce = _hex(obj, "nonce", NONCE_HEX)
    return Hello(
        transcribes=transcribes,
        codecs=tuple(codecs),
        node=_opt_str(obj, "node", 256) or "",
        nonce=nonce,
        version=version,
        records=records,
        raw=body,
    )


def _decode_transcript(obj: dict[str, Any]) -> Transcript:
    no = obj.get("no")
    if not isinstance(no, int) or isinstance(no, bool) or not 0 <= no < 2**31:
        raise ProtocolError("transcript.no must be a non-negative integer")
    start, end = _num(obj, "start"), _num(obj, "end")
    if start is None or end is None or not 0 <= start <= end:
        raise ProtocolError("transcript.start and .end must be numbers with 0 <= start <= end")
    language = _opt_str(obj, "language", 16)
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


def _str(obj: dict[str, Any], key: str, limit: int) -> str:
    """A required string field, checked."""
    value = _opt_str(obj, key, limit, required=True)
    assert value is not None
    return value


def _opt_str(obj: dict[str, Any], key: str, limit: int, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit or not _is_text(value):
        raise ProtocolError(f"{key} must be a string of at most {limit} characters")
    return value


def _is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (JSON allows "\\ud800"): it cannot be
    encoded again, so it would fail later, in the store or a reply, instead of here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hex(obj: dict[str, Any], key: str, length: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != length or value.strip("0123456789abcdef") != "":
        raise ProtocolError(f"{key} must be {length} lowercase hex digits")
    return value


def _num(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{key} must be a finite number")
    try:
        number = float(value)
    except OverflowError:  # an integer past the float range
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(f"{key} must be a finite number")
    return number


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
            # The type first: a TLS ClientHello read as our header also has a huge length,
            # and "this is TLS" is the more useful thing to say.
            if kind not in MessageType._value2member_map_:
                raise ProtocolError(_unknown_type(kind))
            if length > self.max_body:
                raise ProtocolError(f"message of {length} bytes exceeds the {self.max_body} cap")
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
