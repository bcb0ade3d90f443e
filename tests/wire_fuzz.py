"""Wire-protocol fuzzing, shared by tests/test_fuzz_protocol.py (small CI budget) and
scripts/fuzz_wire (the 10^5-input benchmark), so both attack the parser the same way.

Valid messages are built from the message dataclasses themselves: every member of
``protocol.Message`` gets an ``st.builds`` over its fields, each field drawn by its type.
A message type added to the protocol is therefore fuzzed without touching this file; only
fields whose valid values are narrower than their type (hex nonces, the PCM frame size)
have a hint in ``FIELD_HINTS``, and ``test_every_message_type_round_trips`` fails when a new
type's generated instances never pass the decoder, which is the cue to add one.

Mutations are plain functions of a ``random.Random``: hypothesis hands the tests one it
controls (``st.randoms()``), the benchmark a seeded one, so a failure in either is
reproducible from its seed or its hypothesis example.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import random
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from service.transport import protocol as p

HEADER = p.HEADER
SHORT_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no surrogates
HEX = "0123456789abcdef"


def message_classes() -> tuple[type, ...]:
    """Every message dataclass the protocol exports, read from its ``Message`` union."""
    return typing.get_args(p.Message)


def _hex_text(size: int) -> st.SearchStrategy[str]:
    return st.text(HEX, min_size=size, max_size=size)


# Fields whose valid values are narrower than their type. Keyed by field name; a field not
# listed here is drawn from its annotation alone.
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "nonce": _hex_text(getattr(p, "NONCE_HEX", 64)),
    "proof": _hex_text(getattr(p, "PROOF_HEX", 64)),
    # The PCM16 frame size, or any Opus-sized packet; the codec is drawn independently,
    # so some combinations are (rightly) refused by the decoder.
    "payload": st.one_of(
        st.binary(min_size=p.PCM16_FRAME_BYTES, max_size=p.PCM16_FRAME_BYTES),
        st.binary(min_size=1, max_size=getattr(p, "OPUS_MAX_PACKET", 1275)),
    ),
}


def _for_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_for_annotation(a) for a in args))
    if annotation is type(None):
        return st.none()
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_for_annotation(args[0]), max_size=4).map(tuple)
        return st.tuples(*(_for_annotation(a) for a in args))
    if origin is list:
        return st.lists(_for_annotation(args[0]), max_size=4)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from(list(annotation))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(0, 2**31 - 1)  # fits every unsigned field on the wire
    if annotation is float:
        return st.floats(0, 1e5, allow_nan=False, allow_infinity=False)
    if annotation is str:
        return SHORT_TEXT
    if annotation is bytes:
        return st.binary(max_size=64)
    return st.from_type(annotation)


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """``st.builds(cls)`` with every init field drawn by type (or hint); fields with a
    default sometimes keep it, since the default is what real senders use."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if not f.init or not f.compare:  # e.g. Hello.raw: set by the decoder, not compared
            continue
        drawn = FIELD_HINTS[f.name] if f.name in FIELD_HINTS else _for_annotation(hints[f.name])
        if f.default is not dataclasses.MISSING:
            drawn = st.one_of(st.just(f.default), drawn)
        kwargs[f.name] = drawn
    return st.builds(cls, **kwargs)


def messages() -> st.SearchStrategy[Any]:
    """One instance of any message type, most of them valid."""
    return st.one_of(*(message_strategy(cls) for cls in message_classes()))


# -- properties ----------------------------------------------------------------------------


def round_trips(message: Any) -> bool:
    """True when ``message`` comes back exactly from both decode() and a Decoder; False when
    the decoder refuses it with ProtocolError. Anything else is raised (a bug)."""
    data = p.encode(message)
    try:
        got = p.decode(data[0], data[HEADER.size :])
    except p.ProtocolError:
        return False
    assert got == message, f"decode(encode(m)) != m:\n  {message!r}\n  {got!r}"
    assert p.Decoder().feed(data) == [message]
    return True


def check_reencodes(message: Any) -> None:
    """Whatever the decoder accepted must encode again and decode to the same message:
    a value that cannot be re-encoded (a lone surrogate, say) would blow up later, in the
    store or in a reply, instead of at the parser."""
    try:
        data = p.encode(message)
    except p.ProtocolError:
        return  # grew past MAX_BODY on re-encoding: refused cleanly
    again = p.decode(data[0], data[HEADER.size :])
    assert again == message, f"re-encoding changed the message:\n  {message!r}\n  {again!r}"


@dataclass
class FeedResult:
    messages: list[Any] = field(default_factory=list)
    error: p.ProtocolError | None = None
    max_buffered: int = 0
    slowest_feed_s: float = 0.0


def feed_stream(chunks: list[bytes], max_body: int = p.MAX_BODY) -> FeedResult:
    """Feed chunks to a fresh Decoder the way a Link does, stopping at the first
    ProtocolError (the connection closes there). Any other exception propagates; a buffer
    over its bound, or an accepted message that cannot be re-encoded, is an AssertionError."""
    decoder = p.Decoder(max_body=max_body)
    result = FeedResult()
    bound = HEADER.size + max_body
    for chunk in chunks:
        t0 = time.perf_counter()
        try:
            out = decoder.feed(chunk)
        except p.ProtocolError as exc:
            result.error = exc
            return result
        finally:
            result.slowest_feed_s = max(result.slowest_feed_s, time.perf_counter() - t0)
        result.max_buffered = max(result.max_buffered, decoder.buffered)
        assert decoder.buffered <= bound, f"Decoder holds {decoder.buffered} bytes > {bound}"
        for message in out:
            check_reencodes(message)
        result.messages.extend(out)
    return result


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    """Split a stream the way recv() might: whole, byte by byte, or in random pieces."""
    mode = rng.random()
    if mode < 0.25 or not data:
        return [data]
    if mode < 0.35 and len(data) <= 4096:
        return [data[i : i + 1] for i in range(len(data))]
    top = rng.choice((8, 512, 65536))
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, top)
        out.append(data[i : i + n])
        i += n
    return out


# -- structured mutations ------------------------------------------------------------------


def _split(frame: bytes) -> tuple[int, int, bytes]:
    if len(frame) < HEADER.size:
        return (frame[0] if frame else 0), len(frame), b""
    kind, length = HEADER.unpack_from(frame)
    return kind, length, frame[HEADER.size :]


def _reframe(rng: random.Random, kind: int, body: bytes, old_length: int) -> bytes:
    # Usually fix the length to the new body; sometimes leave the stale one (desync).
    length = len(body) if rng.random() < 0.85 else old_length
    return HEADER.pack(kind & 0xFF, length & 0xFFFFFFFF) + body


def flip_bits(rng: random.Random, frame: bytes) -> bytes:
    if not frame:
        return frame
    data = bytearray(frame)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(rng: random.Random, frame: bytes) -> bytes:
    return frame[: rng.randrange(len(frame))] if frame else frame


def corrupt_length(rng: random.Random, frame: bytes) -> bytes:
    kind, length, body = _split(frame)
    edges = (0, 1, length - 1, length + 1, p.MAX_BODY, p.MAX_BODY + 1, 2**31, 2**32 - 1)
    new = rng.choice((*edges, rng.randrange(2**32), rng.randrange(p.MAX_BODY + 1)))
    return HEADER.pack(kind & 0xFF, new & 0xFFFFFFFF) + body


def change_type(rng: random.Random, frame: bytes) -> bytes:
    _, length, body = _split(frame)
    new = rng.choice([*(int(t) for t in p.MessageType), 0, 0x16, 255, rng.randrange(256)])
    return HEADER.pack(new, length) + body


def oversized(rng: random.Random, frame: bytes) -> bytes:
    """A header that claims more than the cap, followed by what would be its body."""
    kind, _, body = _split(frame)
    length = rng.choice([p.MAX_BODY + 1, 2**32 - 1, rng.randrange(p.MAX_BODY + 1, 2**32)])
    return HEADER.pack(kind & 0xFF, length) + body + bytes(rng.randrange(4096))


def _nasty_json(rng: random.Random) -> str:
    """A JSON value (as text) chosen to break a careless field check."""
    depth = rng.choice((2, 100, 999, 1001, 5000, 8000))
    choices: list[Callable[[], str]] = [
        lambda: "1" + "0" * rng.randint(19, 5000),  # huge integers, past float range too
        lambda: rng.choice(["-1", "0", "-0", "2147483648", "4294967296", "18446744073709551616"]),
        lambda: rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-400", "1.5"]),
        lambda: rng.choice(["true", "false", "null", "[]", "{}", "[1,2,3]", '{"a":1}']),
        lambda: rng.choice(['""', '"x"', '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"é\\n"']),
        lambda: json.dumps("A" * rng.randint(200, 20000)),  # over every string limit
        lambda: json.dumps(["pcm16"] * rng.randint(9, 50)),
        lambda: "[" * depth + "]" * depth,  # deep nesting
        lambda: '{"a":' * depth + "1" + "}" * depth,
        lambda: json.dumps(HEX * 4) + ("" if rng.random() < 0.5 else " "),
    ]
    return rng.choice(choices)()


def swap_json_field(rng: random.Random, frame: bytes) -> bytes:
    """Replace, drop or add one field of a JSON body (or the whole body) with a value of
    the wrong type, range or shape; the rest stays valid so the field checks are reached."""
    kind, length, body = _split(frame)
    try:
        obj = json.loads(body)
    except Exception:
        obj = None
    if not isinstance(obj, dict) or rng.random() < 0.1:
        text = _nasty_json(rng)
    else:
        items = [(k, json.dumps(v)) for k, v in obj.items()]
        op = rng.random()
        if op < 0.15 and items:
            del items[rng.randrange(len(items))]
        elif op < 0.3 or not items:
            items.append((rng.choice(["protocol", "extra", "", "token", "__proto__"]), "1"))
        else:
            i = rng.randrange(len(items))
            items[i] = (items[i][0], _nasty_json(rng))
        text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in items) + "}"
    # A lone surrogate written raw (invalid UTF-8) as well as escaped.
    raw = text.encode("utf-8", "surrogatepass")
    return _reframe(rng, kind, raw, length)


def invalid_utf8(rng: random.Random, frame: bytes) -> bytes:
    kind, length, body = _split(frame)
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])
    i = rng.randrange(len(body) + 1)
    return _reframe(rng, kind, body[:i] + bad + body[i:], length)


def resize_body(rng: random.Random, frame: bytes) -> bytes:
    """Grow or shrink the body (an audio payload off by a few bytes, a 16 KiB body)."""
    kind, length, body = _split(frame)
    if rng.random() < 0.5 and body:
        body = body[: rng.randrange(len(body))]
    else:
        body += rng.randbytes(rng.choice((1, 2, 635, rng.randrange(p.MAX_BODY + 2))))
    return _reframe(rng, kind, body, length)


def random_bytes(rng: random.Random, frame: bytes) -> bytes:
    return rng.randbytes(rng.randrange(1, 2048))


def splice(rng: random.Random, frame: bytes) -> bytes:
    """Duplicate, drop or insert a region: frames glued mid-header, repeated headers."""
    if not frame:
        return frame
    i = rng.randrange(len(frame))
    j = rng.randrange(i, len(frame) + 1)
    op = rng.random()
    if op < 0.4:
        return frame[:j] + frame[i:]
    if op < 0.7:
        return frame[:i] + frame[j:]
    return frame[:i] + rng.randbytes(rng.randint(1, 32)) + frame[i:]


MUTATORS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    flip_bits,
    truncate,
    corrupt_length,
    change_type,
    oversized,
    swap_json_field,
    swap_json_field,  # twice the weight: field checks are where the logic is
    invalid_utf8,
    resize_body,
    random_bytes,
    splice,
)


def mutate(rng: random.Random, frame: bytes) -> tuple[bytes, list[str]]:
    """One to three stacked mutations; returns the bytes and the mutators' names."""
    names = []
    for _ in range(rng.randint(1, 3)):
        mutator = rng.choice(MUTATORS)
        frame = mutator(rng, frame)
        names.append(mutator.__name__)
    return frame, names


def hostile_stream(rng: random.Random, messages: list[Any]) -> tuple[bytes, list[str]]:
    """The frames of ``messages`` with at least one of them mutated, as one stream."""
    frames = [p.encode(m) for m in messages]
    target = rng.randrange(len(frames))
    names: list[str] = []
    for i in range(len(frames)):
        if i == target or rng.random() < 0.2:
            frames[i], used = mutate(rng, frames[i])
            names += used
    return b"".join(frames), names
