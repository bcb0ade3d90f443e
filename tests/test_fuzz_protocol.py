"""The wire parser under hypothesis: generated messages round-trip exactly, and generated
plus mutated streams, cut anywhere, never raise anything but ProtocolError, never grow the
Decoder past one header and one capped body, and never leave an accepted message that
cannot be encoded again. Then the same hostility over real sockets to a listening call.

Budget: the ``ci`` profile runs a few thousand examples in all, derandomized (the same
examples every run, so an unrelated change can never turn CI red by luck; every input that
ever found a bug is pinned below as an explicit case). The wide, random search is
scripts/fuzz_wire (10^5 inputs, any seed); ``IM_FUZZ=deep`` runs these tests 20x longer with
fresh randomness each time.
"""

from __future__ import annotations

import json
import os
import random

import pytest
from helpers import wait_state
from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st
from wire_fuzz import (
    HEADER,
    chunked,
    feed_stream,
    hostile_stream,
    message_classes,
    message_strategy,
    messages,
    round_trips,
)

from service.transport import protocol as p

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile(
    "deep",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("IM_FUZZ", "ci")
SCALE = {"ci": 1, "deep": 20}[PROFILE]


def budget(examples: int) -> settings:
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE)


def frame(kind: int, body: bytes | str) -> bytes:
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    return HEADER.pack(kind, len(body)) + body


def transcript_body(**overrides: str) -> str:
    fields = {"no": "1", "start": "0.5", "end": "1.5", "text": '"hi"', **overrides}
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


# Inputs that crashed the parser (or would have), kept as explicit cases forever.
REGRESSIONS = {
    "deeply nested hello": frame(p.MessageType.HELLO, "[" * 5000 + "]" * 5000),
    "deeply nested object": frame(p.MessageType.BYE, '{"a":' * 3000 + "1" + "}" * 3000),
    "int past float range as start": frame(
        p.MessageType.TRANSCRIPT, transcript_body(start="1" + "0" * 400)
    ),
    "int past float range as end": frame(
        p.MessageType.TRANSCRIPT, transcript_body(end="1" + "0" * 400)
    ),
    "int past float range as a score": frame(
        p.MessageType.TRANSCRIPT, transcript_body(avg_logprob="-1" + "0" * 400)
    ),
    "lone surrogate, escaped": frame(p.MessageType.BYE, '{"reason":"\\ud800"}'),
    "lone surrogate in a transcript": frame(
        p.MessageType.TRANSCRIPT, transcript_body(text='"a\\udfffb"')
    ),
    "surrogate encoded raw (invalid UTF-8)": frame(p.MessageType.BYE, '{"reason":"\ud800"}'),
    "NaN": frame(p.MessageType.TRANSCRIPT, transcript_body(end="NaN")),
    "1e999": frame(p.MessageType.TRANSCRIPT, transcript_body(end="1e999")),
    "integer of 5000 digits": frame(p.MessageType.TRANSCRIPT, transcript_body(no="9" * 5000)),
    "length at the cap + 1": HEADER.pack(p.MessageType.AUDIO, p.MAX_BODY + 1) + bytes(100),
    "length 2^32 - 1": HEADER.pack(p.MessageType.HELLO, 2**32 - 1),
    "a TLS ClientHello": bytes.fromhex("160301020001") + bytes(512),
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("data", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_known_hostile_inputs_are_refused_cleanly(data):
    result = feed_stream([data])
    assert isinstance(result.error, p.ProtocolError), result
    assert result.messages == []
    # Byte by byte too: the outcome does not depend on how recv() cut the stream.
    assert isinstance(
        feed_stream([data[i : i + 1] for i in range(len(data))]).error, p.ProtocolError
    )


def test_every_message_type_round_trips():
    """Each member of protocol.Message has generated instances the decoder accepts and
    returns exactly; a new type whose fields need a hint (see wire_fuzz.FIELD_HINTS)
    fails here instead of being fuzzed only with garbage."""
    assert len(message_classes()) >= 4
    for cls in message_classes():
        found = find(
            message_strategy(cls),
            round_trips,
            # Generation only: any instance will do, shrinking it would only cost time.
            settings=settings(
                database=None, derandomize=True, max_examples=500, phases=[Phase.generate]
            ),
        )
        assert isinstance(found, cls)


@budget(400)
@given(st.lists(messages(), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_generated_messages_round_trip_under_any_chunking(batch, rng):
    valid = [m for m in batch if round_trips(m)]
    data = b"".join(p.encode(m) for m in valid)
    result = feed_stream(chunked(rng, data))
    assert result.error is None
    assert result.messages == valid


@budget(1500)
@given(st.lists(messages(), min_size=1, max_size=4), st.randoms(use_true_random=False))
@example([p.Bye(reason="x")], random.Random(0))
def test_mutated_streams_raise_only_protocol_error(batch, rng):
    data, _ = hostile_stream(rng, batch)
    # feed_stream lets any other exception through, and asserts the buffer bound and
    # that every accepted message encodes again.
    result = feed_stream(chunked(rng, data))
    assert result.max_buffered <= HEADER.size + p.MAX_BODY


@budget(400)
@given(st.binary(max_size=2048), st.randoms(use_true_random=False))
def test_arbitrary_bytes_raise_only_protocol_error(data, rng):
    feed_stream(chunked(rng, data))


@budget(300)
@given(st.integers(0, 255), st.binary(max_size=4096))
def test_decode_of_any_body_raises_only_protocol_error(kind, body):
    try:
        message = p.decode(kind, body)
    except p.ProtocolError:
        return
    assert isinstance(message, message_classes())


@budget(200)
@given(st.lists(messages(), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_a_small_cap_is_enforced_before_buffering(batch, rng):
    data, _ = hostile_stream(rng, batch)
    result = feed_stream(chunked(rng, data), max_body=64)
    assert result.max_buffered <= HEADER.size + 64


# -- the live TCP path ---------------------------------------------------------------------


@pytest.fixture
def node(node_factory):
    return node_factory(IM_HELLO_TIMEOUT_S="1")


@pytest.fixture
def listening(client):
    """A real node (no model) with a call listening on a real port."""
    body = {"mode": "listen", "port": 0, "input": "silence", "output": None}
    return client, client.post("/sessions", json=body).get_json()


def send_and_wait_for_close(address: str, data: bytes, half_close: bool = True) -> bytes:
    """Send ``data`` (then FIN, unless ``half_close`` is off) and read until the node
    closes the connection; a node that never does fails the test by timeout."""
    from gevent import socket as gsocket  # this process is not monkey-patched

    host, port = address.rsplit(":", 1)
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        s.settimeout(5)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(gsocket.SHUT_WR)
        except OSError:
            pass  # closed on us mid-send (a header over the cap): that is the point
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"node kept a hostile connection open: {data[:80]!r}")
    return received


def test_hostile_connections_are_turned_away_and_the_call_keeps_listening(listening):
    client, call = listening
    address = call["address"]
    sent = 0
    for data in REGRESSIONS.values():
        send_and_wait_for_close(address, data)
        sent += 1
    # A truncated hello that then says nothing: closed by the hello deadline.
    hello = frame(p.MessageType.HELLO, json.dumps({"protocol": p.PROTOCOL_NAME, "version": 2}))
    send_and_wait_for_close(address, hello[:-3], half_close=False)
    sent += 1

    @settings(budget(25), suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(messages(), min_size=1, max_size=3), st.randoms(use_true_random=False))
    def one_connection(batch, rng):
        nonlocal sent
        data, _ = hostile_stream(rng, batch)
        send_and_wait_for_close(address, data)
        sent += 1

    one_connection()

    snap = client.get(f"/sessions/{call['id']}").get_json()
    assert snap["state"] == "listening"
    assert snap["stats"]["rejected_connections"] == sent
    assert client.get("/healthz").status_code == 200
    # And the right caller still gets through: this node dials its own listening call.
    dial = {"mode": "dial", "peer": address, "token": call["token"], "input": "silence"}
    dialer = client.post("/sessions", json={**dial, "output": None}).get_json()
    wait_state(client, dialer["id"], {"connected"})
    wait_state(client, call["id"], {"connected"})
    client.delete(f"/sessions/{dialer['id']}")
