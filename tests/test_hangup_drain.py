"""Hanging up lets both sides' last finals reach the other node before the link closes.

The side that hangs up sends a *pending* bye; both finish transcribing what they hold
(bounded by IM_HANGUP_DRAIN_S), send their last finals, then a plain bye, and close. A peer
that never answers, or one from before drains (which closes on any bye), ends the call
within a few seconds. Wire-level cases drive one side by hand (a gevent socket, so the
in-process node's greenlets run while the test reads); the transcript case is two real
node processes with tiny.en.
"""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket as gsocket
from helpers import wait_state as wait_api_state
from helpers import wait_until
from wire import Reader, dial_handshake, listen, make_node, wait_state

from service.calls.session import ANSWER_S
from service.localnodes import start_call
from service.transport import protocol as p


def connected_by_hand(tmp_path):
    """An in-process node listening, and a hand-driven dialer connected to it."""
    node = make_node(tmp_path, "a")
    session = listen(node)
    host, port = session.local_address.rsplit(":", 1)
    sock = gsocket.create_connection((host, int(port)), timeout=10)
    answer, reader = dial_handshake(sock, session.token, transcribes=True)
    assert isinstance(answer, p.Auth)
    wait_state(session, {"connected"})
    wait_until(lambda: session.media, 10, "the call's media loops")
    return node, session, sock, reader


def next_bye(reader: Reader) -> p.Bye | None:
    """The next bye, skipping audio and keepalives; None if the link closed first."""
    while True:
        message = reader.next()
        if message is None or isinstance(message, p.Bye):
            return message


def test_a_hangup_waits_for_the_peers_last_finals(tmp_path):
    """Before: the node sent its bye and closed at once, so what the peer transcribed
    after it (its last utterance) never reached this node."""
    node, session, sock, reader = connected_by_hand(tmp_path)
    try:
        gevent.sleep(0.5)
        ending = gevent.spawn(session.end, "hangup")
        bye = next_bye(reader)
        assert bye is not None and bye.pending and bye.reason == "hangup"
        gevent.sleep(0.3)  # transcribing its last words
        sock.sendall(p.encode(p.Transcript(no=0, start=0.1, end=0.4, text="my last words")))
        sock.sendall(p.encode(p.Bye(reason="peer_hangup")))
        ending.join(10)
        assert session.state == "ended" and session.end_reason == "hangup"
        texts = [s.text for s in node.store.segments(session.id)]
        assert texts == ["my last words"]
        assert next_bye(reader) == p.Bye(reason="hangup")  # its own plain bye came too
    finally:
        sock.close()
        node.close()


def test_a_peer_that_never_answers_ends_the_call_within_seconds(tmp_path):
    """The peer's keepalive runs (so it is not "lost") but it never answers the pending
    bye: the drain does not wait IM_HANGUP_DRAIN_S (30 s) for it."""
    node, session, sock, _ = connected_by_hand(tmp_path)

    def keepalive() -> None:
        for i in range(200):
            sock.sendall(p.encode(p.Ping(id=i, sent_us=0)))
            gevent.sleep(0.5)

    pinger = gevent.spawn(keepalive)
    try:
        start = time.monotonic()
        session.end("hangup")
        took = time.monotonic() - start
        assert session.state == "ended" and session.end_reason == "hangup"
        assert took <= ANSWER_S + 3.0, took  # a few seconds, not the drain's 30
    finally:
        pinger.kill()
        sock.close()
        node.close()


def test_an_older_peer_that_closes_on_any_bye_ends_the_call_at_once(tmp_path):
    node, session, sock, reader = connected_by_hand(tmp_path)
    try:
        start = time.monotonic()
        ending = gevent.spawn(session.end, "hangup")
        assert next_bye(reader) is not None
        sock.close()  # what a node from before drains does on a bye
        ending.join(10)
        assert session.state == "ended" and time.monotonic() - start < 1.5
    finally:
        node.close()


def test_the_side_that_did_not_hang_up_answers_and_keeps_the_last_finals(tmp_path):
    node, session, sock, reader = connected_by_hand(tmp_path)
    try:
        sock.sendall(p.encode(p.Bye(reason="hangup", pending=True)))
        answer = next_bye(reader)
        assert answer is not None and answer.pending  # it drains too, and says so
        sock.sendall(p.encode(p.Transcript(no=0, start=0.1, end=0.4, text="said last")))
        sock.sendall(p.encode(p.Bye(reason="hangup")))
        wait_state(session, {"ended"}, timeout=10)
        assert session.end_reason == "peer_hangup"
        assert [s.text for s in node.store.segments(session.id)] == ["said last"]
        assert next_bye(reader) == p.Bye(reason="peer_hangup")
    finally:
        sock.close()
        node.close()


def test_a_repeated_pending_bye_is_one_hangup(tmp_path):
    node, session, sock, reader = connected_by_hand(tmp_path)
    try:
        for _ in range(3):
            sock.sendall(p.encode(p.Bye(reason="hangup", pending=True)))
        assert next_bye(reader) == p.Bye(reason="peer_hangup", pending=True)
        sock.sendall(p.encode(p.Bye(reason="hangup")))
        wait_state(session, {"ended"}, timeout=10)
        assert session.end_reason == "peer_hangup"
    finally:
        sock.close()
        node.close()


def test_byes_say_pending_only_when_they_are():
    assert p.encode(p.Bye(reason="hangup")) == p.encode(p.Bye(reason="hangup", pending=False))
    assert b"pending" not in p.encode(p.Bye(reason="hangup"))  # as older nodes send it
    (back,) = p.Decoder().feed(p.encode(p.Bye(reason="x", pending=True)))
    assert back == p.Bye(reason="x", pending=True)
    with pytest.raises(p.ProtocolError, match="pending"):
        p.decode(p.MessageType.BYE, b'{"reason":"x","pending":1}')


LONG = "en_librispeech_1995-1837-0001.wav"  # 8.7 s: still speaking when the other hangs up
SHORT = "en_cmu_goforward.wav"  # 2.8 s


@pytest.mark.slow
def test_both_nodes_hold_the_same_transcript_when_one_hangs_up_mid_speech(node_pair, speech_dir):
    """A hangs up one second after its own speech, while B is still speaking: B's last
    utterance is cut there and transcribed after the hang-up, and must still reach A.
    Before: A closed the link right after its bye, and B's last finals were lost to A."""
    a, b = node_pair
    call_a, call_b = start_call(
        a,
        b,
        listen={"input": a.media(speech_dir / SHORT), "output": None},
        dial={"input": b.media(speech_dir / LONG), "output": None},
    )
    wait_until(
        lambda: a.call("GET", f"/sessions/{call_a['id']}")["stats"]["input"].get("ended"),
        30,
        "A's speech to end",
        step=0.1,
    )
    time.sleep(1.0)
    a.call("DELETE", f"/sessions/{call_a['id']}")
    wait_api_state(b, call_b["id"], {"ended"}, timeout=60)
    # The live revisions: each node's post-call pass makes its own final one.
    ta = a.call("GET", f"/sessions/{call_a['id']}/transcript?revision=live")["segments"]
    tb = b.call("GET", f"/sessions/{call_b['id']}/transcript?revision=live")["segments"]

    def said(segs, speaker):
        return [(s["start"], s["end"], s["text"]) for s in segs if s["speaker"] == speaker]

    assert said(tb, "local"), "B said something"
    assert said(ta, "local"), "A said something"
    assert said(ta, "remote") == said(tb, "local")  # all of B's words reached A
    assert said(tb, "remote") == said(ta, "local")
    assert b.call("GET", f"/sessions/{call_b['id']}")["end_reason"] == "peer_hangup"
