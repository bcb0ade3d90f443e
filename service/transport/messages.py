"""The call protocol's messages: one frozen dataclass per message, and what each carries.

Apart from protocol.py (framing, encoding, and parsing bodies field by field) so that the
wire's vocabulary reads in one screen, and code that only builds or inspects messages (the
session, the handshake, the tests) needs none of the parser. protocol.py re-exports every
name here, so ``protocol.Hello`` and ``messages.Hello`` are the same class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.codec_table import PREFERENCE, Codec
from service.vocab import Segment, Speaker

PROTOCOL_NAME = "intellimeet-call"
PROTOCOL_VERSION = 2
# Codecs (ids, names, preference) come from the one table: service/codec_table.py.


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: what this node is and can do, plus a fresh nonce that makes
    the handshake's proofs unique to this connection. Carries no secret.

    ``raw`` is the body exactly as it came off the wire (empty for a hello made locally),
    because the proofs hash what was sent, not a re-encoding of it."""

    transcribes: bool
    codecs: tuple[str, ...] = ("pcm16",)
    node: str = ""
    nonce: str = ""
    version: int = PROTOCOL_VERSION
    # Whether this side records the call (service/recordings/); None: it did not say (a
    # node from before recordings), which the other side shows as unknown.
    records: bool | None = None
    raw: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Auth:
    """Proof of the call token, bound to this connection's hellos (hex HMAC-SHA256)."""

    proof: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: int
    sent_us: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Echo of a ping's id and time, so the pinger measures the round trip on its clock."""

    id: int
    sent_us: int


@dataclass(frozen=True, slots=True)
class Audio:
    seq: int
    capture_time_us: int
    payload: bytes
    codec: Codec = Codec.PCM16


@dataclass(frozen=True, slots=True)
class Transcript:
    """A final segment the sender transcribed from its own microphone: the wire's framing
    of ``vocab.Segment`` (its fields, with the sender's running number as ``no``; the
    speaker is implied, and the task is not sent)."""

    no: int  # the sender's running segment number, unique per call and speaker
    start: float
    end: float
    text: str
    language: str | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None

    @classmethod
    def of(cls, segment: Segment) -> Transcript:
        assert segment.number is not None, "a segment is numbered before it is sent"
        return cls(
            no=segment.number,
            **{name: getattr(segment, name) for name in WIRE_SEGMENT_FIELDS},
        )

    def segment(self) -> Segment:
        """As the receiver keeps it: the peer's (remote) segment number ``no``."""
        return Segment(
            speaker=Speaker.REMOTE,
            number=self.no,
            **{name: getattr(self, name) for name in WIRE_SEGMENT_FIELDS},
        )


# What of a Segment travels in a Transcript, under the same names.
WIRE_SEGMENT_FIELDS = (
    "start",
    "end",
    "text",
    "language",
    "avg_logprob",
    "no_speech_prob",
    "compression_ratio",
)


@dataclass(frozen=True, slots=True)
class Bye:
    """The end of the call, and why. ``pending``: "I am hanging up, and my last finals are
    still coming; send me yours" (calls/session.py's drain); the plain bye that follows
    says they all came. A node from before drains reads any bye as the last word, which is
    what it always did."""

    reason: str
    pending: bool = False


Message = Hello | Audio | Transcript | Bye | Auth | Ping | Pong


def choose_codec(mine: tuple[str, ...] | list[str], theirs: tuple[str, ...] | list[str]) -> str:
    """The codec a call uses: the most preferred one both sides list; PCM16, which every
    node speaks, otherwise."""
    for codec in PREFERENCE:
        name = codec.label
        if name in mine and name in theirs:
            return name
    return "pcm16"
