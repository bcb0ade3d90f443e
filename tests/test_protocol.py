"""Wire protocol: every message round-trips; anything malformed is refused, never crashes."""

from __future__ import annotations

import contextlib
import json
import struct

import gevent
import pytest
from gevent import socket as gsocket

from service.transport import protocol as p


def frame(kind: int, body: bytes) -> bytes:
    return p.HEADER.pack(kind, len(body)) + body


NONCE = "0123456789abcdef" * 4

MESSAGES = [
    p.Hello(transcribes=True, codecs=("opus", "pcm16"), node="node-a", nonce=NONCE),
    p.Hello(transcribes=False, nonce="f" * 64),
    p.Audio(
        seq=7, capture_time_us=1_700_000_000_123_456, payload=bytes(range(256)) * 2 + bytes(128)
    ),
    p.Audio(seq=8, capture_time_us=1, payload=b"\xfc", codec=p.Codec.OPUS),
    p.Audio(seq=9, capture_time_us=2, payload=bytes(p.OPUS_MAX_PACKET), codec=p.Codec.OPUS),
    p.Auth(proof="a" * 64),
    p.Ping(id=1, sent_us=123_456_789),
    p.Pong(id=2**32 - 1, sent_us=2**64 - 1),
    p.Transcript(
        no=3,
        start=1.5,
        end=4.25,
        text="Ask not — what your country… 国",
        language="en",
        avg_logprob=-0.2,
        no_speech_prob=0.01,
        compression_ratio=1.3,
    ),
    p.Transcript(no=0, start=0.0, end=0.0, text=""),
    p.Bye(reason="hangup"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert p.Decoder().feed(p.encode(message)) == [message]


def test_stream_split_at_every_byte_boundary():
    stream = b"".join(p.encode(m) for m in MESSAGES)
    for cut in range(1, len(stream)):
        d = p.Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == MESSAGES
        assert d.buffered == 0


def test_truncated_message_waits_for_the_rest():
    data = p.encode(MESSAGES[0])
    d = p.Decoder()
    assert d.feed(data[:-1]) == []
    assert d.buffered == len(data) - 1
    assert d.feed(data[-1:]) == [MESSAGES[0]]


def test_oversized_length_rejected_before_the_body_arrives():
    d = p.Decoder()
    with pytest.raises(p.ProtocolError, match="exceeds"):
        d.feed(p.HEADER.pack(p.MessageType.AUDIO, p.MAX_BODY + 1))
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.Decoder().feed(p.HEADER.pack(p.MessageType.HELLO, 2**32 - 1))


def test_encoder_refuses_oversized_messages():
    with pytest.raises(p.ProtocolError):
        p.encode(p.Bye(reason="x" * (p.MAX_BODY + 10)))


def test_a_decoded_hello_keeps_the_bytes_it_came_in():
    """The handshake hashes hellos exactly as sent, so a peer's spelling of the JSON (key
    order, spaces, extra fields) must survive decoding."""
    body = json.dumps(
        {
            "nonce": NONCE,
            "transcribes": True,
            "version": p.PROTOCOL_VERSION,
            "protocol": p.PROTOCOL_NAME,
            "future_field": [1, 2],
        },
        indent=1,
    ).encode()
    (hello,) = p.Decoder().feed(frame(p.MessageType.HELLO, body))
    assert hello.nonce == NONCE and hello.codecs == ()
    assert p.hello_body(hello) == body
    mine = p.Hello(transcribes=True, nonce=NONCE)
    assert p.hello_body(mine) == p.encode(mine)[p.HEADER.size :]


def test_an_older_hello_still_parses_so_its_version_can_be_refused():
    body = json.dumps(
        {"protocol": p.PROTOCOL_NAME, "version": 1, "token": "t", "transcribes": True}
    ).encode()
    (hello,) = p.Decoder().feed(frame(p.MessageType.HELLO, body))
    assert hello.version == 1 and hello.nonce == ""


class RecordingRelay:
    """Forwards one TCP connection to ``target`` and keeps every byte it carries each way
    (gevent sockets: this process's in-process nodes run on the same hub)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.server = gsocket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.to_listener = bytearray()
        self.to_dialer = bytearray()
        self._socks = [self.server]
        self._greenlets = [gevent.spawn(self._relay)]

    def _relay(self) -> None:
        dialer, _ = self.server.accept()
        listener = gsocket.create_connection(self.target)
        self._socks += [dialer, listener]
        self._greenlets += [
            gevent.spawn(self._pipe, dialer, listener, self.to_listener),
            gevent.spawn(self._pipe, listener, dialer, self.to_dialer),
        ]

    @staticmethod
    def _pipe(src: gsocket.socket, dst: gsocket.socket, kept: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                kept += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(gsocket.SHUT_WR)

    def close(self) -> None:
        gevent.killall(self._greenlets)
        for s in self._socks:
            s.close()


def test_the_token_is_not_part_of_a_hello(node_factory):
    """The call token is proven, never sent: in a real handshake between two nodes, both
    ways through a relay that keeps every byte, neither side's bytes hold the token, and
    each side's one hello has no token field."""
    from wire import dial, listen, wait_state

    listening = listen(node_factory("a"))
    relay = RecordingRelay(listening.local_address)
    try:
        dialing = dial(node_factory("b"), relay.address, listening.token)
        wait_state(dialing, {"connected"})
        wait_state(listening, {"connected"})
        dialing.end()
        wait_state(listening, {"ended"})
    finally:
        relay.close()
    for sent in (relay.to_listener, relay.to_dialer):
        assert listening.token.encode() not in sent, "the call token went over the wire"
        messages = p.Decoder().feed(bytes(sent))
        assert any(isinstance(m, p.Auth) for m in messages)  # each side proved the token
        (hello,) = [m for m in messages if isinstance(m, p.Hello)]
        assert "token" not in json.loads(p.hello_body(hello))


@pytest.mark.parametrize(
    "mine,theirs,chosen",
    [
        (("opus", "pcm16"), ("opus", "pcm16"), "opus"),
        (("pcm16", "opus"), ["opus"], "opus"),
        (("opus", "pcm16"), ("pcm16",), "pcm16"),
        (("pcm16",), ("opus", "pcm16"), "pcm16"),
        ((), ("speex",), "pcm16"),
    ],
)
def test_choose_codec(mine, theirs, chosen):
    assert p.choose_codec(mine, theirs) == chosen


def test_a_tls_client_hello_is_named_as_such():
    client_hello = bytes.fromhex("160301020001") + bytes(100)
    with pytest.raises(p.ProtocolError, match="TLS"):
        p.Decoder().feed(client_hello)


def hello_json(**fields) -> bytes:
    base = {"protocol": p.PROTOCOL_NAME, "version": p.PROTOCOL_VERSION, "transcribes": True}
    return json.dumps({**base, "nonce": NONCE, **fields}).encode()


@pytest.mark.parametrize(
    "kind,body,match",
    [
        (99, b"{}", "unknown message type"),
        (0, b"", "unknown message type"),
        (p.MessageType.HELLO, b"\x80\x81garbage", "not valid JSON"),
        (p.MessageType.HELLO, b"[1, 2]", "JSON object"),
        (p.MessageType.HELLO, b'{"protocol": "other", "version": 1}', "hello"),
        (
            p.MessageType.HELLO,
            json.dumps(
                {"protocol": p.PROTOCOL_NAME, "version": "1", "token": "t", "transcribes": True}
            ).encode(),
            "version",
        ),
        (p.MessageType.HELLO, hello_json(transcribes="yes"), "transcribes"),
        (p.MessageType.HELLO, hello_json(nonce=None), "nonce"),
        (p.MessageType.HELLO, hello_json(nonce=""), "nonce"),
        (p.MessageType.HELLO, hello_json(nonce="ab" * 31), "nonce"),
        (p.MessageType.HELLO, hello_json(nonce=NONCE.upper()), "nonce"),
        (p.MessageType.HELLO, hello_json(nonce="g" * 64), "nonce"),
        (p.MessageType.HELLO, hello_json(codecs="pcm16"), "codecs"),
        (p.MessageType.HELLO, hello_json(codecs=["x"] * 9), "codecs"),
        (p.MessageType.AUTH, b'{"proof": 5}', "proof"),
        (p.MessageType.AUTH, b'{"proof": "abc"}', "proof"),
        (p.MessageType.AUTH, json.dumps({"proof": "z" * 64}).encode(), "proof"),
        (p.MessageType.AUTH, b"{}", "proof"),
        (p.MessageType.PING, b"\x00" * 11, "12 bytes"),
        (p.MessageType.PONG, b"\x00" * 13, "12 bytes"),
        (p.MessageType.PING, b"", "12 bytes"),
        (p.MessageType.AUDIO, b"\x00\x00", "shorter than its header"),
        (p.MessageType.AUDIO, struct.pack(">BIQ", 9, 1, 1) + bytes(640), "unknown audio codec"),
        (p.MessageType.AUDIO, struct.pack(">BIQ", 0, 1, 1) + bytes(639), "640 bytes"),
        (p.MessageType.AUDIO, struct.pack(">BIQ", 1, 1, 1), "Opus packet"),
        (p.MessageType.AUDIO, struct.pack(">BIQ", 1, 1, 1) + bytes(1276), "Opus packet"),
        (p.MessageType.TRANSCRIPT, b'{"no": -1, "start": 0, "end": 1, "text": ""}', "no"),
        (p.MessageType.TRANSCRIPT, b'{"no": 1, "start": 2, "end": 1, "text": ""}', "start"),
        (p.MessageType.TRANSCRIPT, b'{"no": 1, "start": NaN, "end": 1, "text": ""}', "JSON"),
        (p.MessageType.TRANSCRIPT, b'{"no": 1, "start": 0, "end": 1, "text": 7}', "text"),
        (p.MessageType.TRANSCRIPT, b'{"no": true, "start": 0, "end": 1, "text": ""}', "no"),
        (p.MessageType.BYE, b'{"reason": null}', "reason"),
        (p.MessageType.BYE, b"", "not valid JSON"),
    ],
)
def test_malformed_messages_are_refused(kind, body, match):
    with pytest.raises(p.ProtocolError, match=match):
        p.Decoder().feed(frame(kind, body))


def test_pickle_payload_is_just_garbage():
    import pickle

    evil = pickle.dumps({"token": "x"})
    with pytest.raises(p.ProtocolError):
        p.Decoder().feed(frame(p.MessageType.HELLO, evil))


def test_random_garbage_never_escapes_as_another_exception():
    import random

    rng = random.Random(1234)
    for _ in range(3000):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        with contextlib.suppress(p.ProtocolError):
            p.Decoder().feed(blob)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("peer.example:65535", ("peer.example", 65535)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1%eth0]:7000", ("fe80::1%eth0", 7000)),
        ("127.0.0.1:\u0667\u0660\u0660\u0660", None),  # Arabic-Indic digits: int() takes them
        ("127.0.0.1:\u00b9", None),  # superscript one: isdigit() says yes
        ("127.0.0.1\x00:7000", None),
        ("peer\x1b[31m:7000", None),
        ("two words:7000", None),
        ("peer\t:7000", None),
        ("[peer.example]:7000", None),  # brackets are for IPv6 only
        ("[::1\x00]:7000", None),
        ("[::1]", None),
        ("::1:7000", None),
        ("peer:0", None),
        ("peer:070000", None),
        ("peer:+70", None),
        (":7000", None),
    ],
)
def test_parse_address_takes_ascii_ports_and_clean_hosts_only(text, expected):
    from service.transport.addresses import parse_address

    if expected is None:
        with pytest.raises(ValueError):
            parse_address(text)
    else:
        assert parse_address(text) == expected
