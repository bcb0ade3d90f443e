"""The in-memory link pair (tests/memlink.py) behaves as a link over loopback does: messages
arrive whole and in order, an end that closes is seen closed after what it sent, keepalive
measures a round trip, and an end that stops reading stalls the sender into closing. Then
the handshake's two exchanges (transport/handshake.py) run over it, no socket needed: the
token is proven both ways and never sent, and every way of not holding it is refused."""

from __future__ import annotations

import time

import gevent
import pytest
from helpers import wait_until
from memlink import link_pair

from service.transport import handshake
from service.transport import link as link_module
from service.transport import protocol as p
from service.transport.link import LinkClosed

MESSAGES = [
    p.Hello(transcribes=True, codecs=("opus", "pcm16"), node="a", nonce="0" * 64),
    p.Auth(proof="f" * 64),
    p.Audio(seq=1, capture_time_us=5, payload=bytes(640)),
    p.Audio(seq=2, capture_time_us=6, payload=b"\xfc" * 40, codec=p.Codec.OPUS),
    p.Transcript(no=0, start=0.5, end=1.5, text="ask not", language="en", avg_logprob=-0.2),
    p.Bye(reason="hangup"),
]


def test_messages_arrive_whole_in_order_and_are_counted_at_both_ends():
    dialer, listener = link_pair()
    for message in MESSAGES:
        dialer.send(message)
    assert [listener.recv(timeout=1) for _ in MESSAGES] == MESSAGES
    assert dialer.stats.bytes_sent == listener.stats.bytes_received > 0
    assert dialer.stats.messages_sent == listener.stats.messages_received == len(MESSAGES)
    assert dialer.stats.frames_sent == listener.stats.frames_received == 2
    assert not dialer.tls and dialer.peer == "memory:listener"


def test_a_transcript_goes_both_ways_while_the_other_end_waits_for_it():
    dialer, listener = link_pair()
    waiting = gevent.spawn(listener.recv, 5)
    gevent.sleep(0.05)  # the listener is parked in recv with nothing there
    said = p.Transcript(no=3, start=1.0, end=2.0, text="what your country can do")
    dialer.send(said)
    assert waiting.get(timeout=5) == said
    listener.send(p.Transcript(no=0, start=0.0, end=0.5, text="hi"))
    assert dialer.recv(timeout=1).text == "hi"


def test_nothing_in_time_is_a_timeout_and_a_closed_end_is_seen_after_what_it_sent():
    dialer, listener = link_pair()
    with pytest.raises(TimeoutError):
        listener.recv(timeout=0.05)
    dialer.send(p.Bye(reason="hangup"))
    dialer.close()
    assert listener.recv(timeout=1) == p.Bye(reason="hangup")
    with pytest.raises(LinkClosed, match="peer closed"):
        listener.recv(timeout=1)
    with pytest.raises(LinkClosed):
        listener.send(p.Bye(reason="too late"))
    with pytest.raises(LinkClosed):
        dialer.send(p.Bye(reason="closed here"))


def test_closing_an_end_wakes_its_own_blocked_receive():
    dialer, _listener = link_pair()
    waiting = gevent.spawn(dialer.recv)
    gevent.sleep(0.05)
    dialer.close()
    with pytest.raises(LinkClosed):
        waiting.get(timeout=5)


def test_keepalive_measures_the_round_trip_through_the_receive_loops():
    dialer, listener = link_pair()
    readers = [gevent.spawn(end.recv) for end in (dialer, listener)]  # answer pings
    dialer.start_keepalive(interval_s=0.05)
    try:
        wait_until(lambda: dialer.stats.pongs_received >= 3, 5, "three pongs")
    finally:
        dialer.close()
        listener.close()
        gevent.killall(readers)
    assert listener.stats.pings_answered >= 3
    assert dialer.stats.rtt_ms_min is not None and dialer.stats.rtt_ms_min >= 0


def test_an_end_that_stops_reading_stalls_the_sender_into_closing(monkeypatch):
    monkeypatch.setattr(link_module, "SEND_TIMEOUT_S", 0.2)
    dialer, _listener = link_pair(capacity=4096)  # the listener never reads
    frame = p.Audio(seq=0, capture_time_us=0, payload=bytes(640))
    with pytest.raises(LinkClosed, match="stopped reading"):
        for _ in range(100):  # 64 kB: far past what the pipe holds
            dialer.send(frame)
    assert dialer.stats.send_stalls == 1 and dialer.closed
    assert dialer.stats.bytes_sent <= 4096


def test_a_recording_pair_keeps_the_bytes_each_end_sent():
    dialer, listener = link_pair(record=True)
    dialer.send(MESSAGES[0])
    listener.send(MESSAGES[-1])
    assert dialer.sock.sent == p.encode(MESSAGES[0])
    assert listener.sock.sent == p.encode(MESSAGES[-1])


# -- the handshake exchanges (transport/handshake.py) over a pair ------------------------

TOKEN = "the-call-token-0123456789abcdef"


def hello(**fields) -> p.Hello:
    return p.Hello(
        transcribes=True, codecs=("opus", "pcm16"), nonce=handshake.new_nonce(), **fields
    )


def shake(dialer_token: str, listener_token: str = TOKEN, claim=lambda: True, record=False):
    """Run both halves at once, the listener's in a greenlet; returns what each gave (a
    Hello, a reason, or the exception it raised) and the pair."""
    dialer, listener = link_pair(record=record)
    deadline = time.monotonic() + 2
    mine, theirs = hello(node="dialer"), hello(node="listener")

    def answer() -> p.Hello | BaseException:
        try:
            return handshake.answer(listener, listener_token, theirs, deadline, claim)
        except (handshake.Refused, LinkClosed, TimeoutError) as exc:
            listener.close()  # as a listening call turns a caller away
            return exc

    answering = gevent.spawn(answer)
    try:
        dialed: p.Hello | str | BaseException = handshake.call(dialer, dialer_token, mine, deadline)
    except (LinkClosed, TimeoutError) as exc:
        dialed = exc
    return dialed, answering.get(timeout=5), (mine, theirs), (dialer, listener)


def test_the_right_token_gets_each_side_the_others_hello():
    dialed, answered, (mine, theirs), (dialer, listener) = shake(TOKEN)
    assert dialed == theirs and answered == mine
    # Then the link carries the call: a transcript reaches the other side.
    dialer.send(p.Transcript(no=0, start=0.0, end=1.0, text="ask not"))
    assert listener.recv(timeout=1).text == "ask not"


def test_a_wrong_token_is_refused_and_the_dialer_learns_nothing_more():
    dialed, answered, _, _ = shake("not-the-token-0123456789abcdef")
    assert isinstance(answered, handshake.Refused) and answered.reason == "wrong call token"
    assert isinstance(dialed, LinkClosed)  # turned away without the listener's proof


def test_a_listener_without_the_token_cannot_prove_it_to_the_dialer():
    """A forger that answers every step but can only guess the proof."""
    dialer, forger = link_pair()

    def forge() -> None:
        forger.recv(timeout=2)  # the dialer's hello
        forger.send(hello(node="forger"))
        forger.recv(timeout=2)  # the dialer's proof, useless without the token
        forger.send(p.Auth(proof="0" * 64))

    forging = gevent.spawn(forge)
    dialed = handshake.call(dialer, TOKEN, hello(), time.monotonic() + 2)
    forging.get(timeout=5)
    assert dialed == "handshake_failed: listener could not prove the call token"


def test_a_call_already_claimed_turns_the_next_right_caller_away():
    dialed, answered, _, _ = shake(TOKEN, claim=lambda: False)
    assert isinstance(answered, handshake.Refused)
    assert answered.reason == "call is no longer listening"
    assert isinstance(dialed, LinkClosed)


def test_a_listener_that_never_answers_fails_the_dialer_at_the_one_deadline():
    dialer, _listener = link_pair()  # the listener reads nothing and says nothing
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handshake.call(dialer, TOKEN, hello(), started + 0.3)
    assert 0.25 <= time.monotonic() - started < 1.0


def test_neither_exchange_sends_the_token():
    dialed, answered, _, (dialer, listener) = shake(TOKEN, record=True)
    assert isinstance(dialed, p.Hello) and isinstance(answered, p.Hello)
    for sent in (dialer.sock.sent, listener.sock.sent):
        assert sent and TOKEN.encode() not in sent


def test_a_recorded_handshake_replayed_to_a_fresh_listener_is_refused():
    _, _, _, (dialer, _listener) = shake(TOKEN, record=True)
    recorded = p.Decoder().feed(bytes(dialer.sock.sent))  # the dialer's hello and proof
    attacker, listener = link_pair()
    for message in recorded:
        attacker.send(message)
    with pytest.raises(handshake.Refused, match="wrong call token"):
        handshake.answer(listener, TOKEN, hello(), time.monotonic() + 2, lambda: True)
