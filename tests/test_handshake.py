"""Call authentication: the token is proven, never sent; wrong, missing, replayed and forged
handshakes never connect; keepalive measures the round trip. Real sockets on loopback."""

from __future__ import annotations

import contextlib
import json
import time

import gevent
import gevent.event
import pytest
from gevent import socket as gsocket
from helpers import wait_until
from wire import Reader, dial, dial_handshake, listen, make_node, wait_state

from service.api import create_app
from service.transport import handshake
from service.transport import protocol as p
from service.transport.listener import Pending

NONCE_A, NONCE_B = "a" * 64, "b" * 64


# -- the pure part ----------------------------------------------------------------------


def hellos(**dialer_fields):
    d = p.Hello(transcribes=True, codecs=("opus", "pcm16"), nonce=NONCE_A, **dialer_fields)
    return d, p.Hello(transcribes=True, codecs=("opus", "pcm16"), nonce=NONCE_B)


def test_proofs_check_out_only_with_the_same_token_role_and_hellos():
    d, lst = hellos()
    h = handshake.transcript_hash(d, lst)
    good = handshake.proof("tok", handshake.DIALER, h)
    assert handshake.verify("tok", handshake.DIALER, h, good)
    assert not handshake.verify("other", handshake.DIALER, h, good)
    assert not handshake.verify("", handshake.DIALER, h, good)
    assert not handshake.verify("tok", handshake.LISTENER, h, good)  # no reflection
    # Another nonce, another codec list, or the hellos swapped: another transcript.
    for other in (
        handshake.transcript_hash(p.Hello(transcribes=True, codecs=("opus", "pcm16")), lst),
        handshake.transcript_hash(hellos(node="x")[0], lst),
        handshake.transcript_hash(p.Hello(transcribes=True, codecs=("pcm16",), nonce=NONCE_A), lst),
        handshake.transcript_hash(lst, d),
    ):
        assert other != h
        assert not handshake.verify("tok", handshake.DIALER, other, good)


def test_nonces_are_fresh_and_the_right_size():
    nonces = {handshake.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == p.NONCE_HEX and int(n, 16) >= 0 for n in nonces)


# -- over real sockets ------------------------------------------------------------------


@pytest.fixture
def nodes(tmp_path):
    a, b = make_node(tmp_path, "a"), make_node(tmp_path, "b")
    yield a, b
    b.close()
    a.close()


def test_right_token_connects_and_keepalive_measures_the_round_trip(nodes):
    a, b = nodes
    listening = listen(a)
    dialing = dial(b, listening.local_address, listening.token)
    wait_state(dialing, {"connected"})
    wait_state(listening, {"connected"})
    assert dialing.peer_hello is not None and listening.peer_hello is not None
    assert dialing.peer_hello.nonce != listening.peer_hello.nonce
    # Both offer Opus by default, so both send it.
    assert dialing.codec == listening.codec == "opus"
    wait_until(
        lambda: dialing.link.stats.pongs_received >= 1 and listening.link.stats.pongs_received >= 1,
        what="a pong each way",
    )
    snap = create_app(b).test_client().get(f"/sessions/{dialing.id}").get_json()
    link = snap["stats"]["link"]
    assert link["tls"] is False
    assert link["pings_sent"] >= 1 and link["pongs_received"] >= 1
    assert 0 < link["rtt_ms_min"] <= link["rtt_ms_avg"] <= link["rtt_ms_max"] < 1000
    assert snap["stats"]["frames_received"] > 0  # pings did not get in the way of audio
    b.registry.get(dialing.id).end()
    assert wait_state(listening, {"ended"}).end_reason == "peer_hangup"


def test_wrong_token_never_connects_and_the_call_keeps_listening(nodes):
    a, b = nodes
    listening = listen(a)
    wrong = dial(b, listening.local_address, "not-the-token")
    assert wait_state(wrong, {"failed"}).end_reason == "rejected: wrong call token"
    assert listening.state == "listening" and listening.rejected_connections == 1
    right = dial(b, listening.local_address, listening.token)
    wait_state(right, {"connected"})
    right.end()


def test_a_missing_token_never_connects(nodes):
    a, _ = nodes
    listening = listen(a)
    host, port = listening.local_address.rsplit(":", 1)
    # An empty token's proof is refused like any other wrong one.
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        answer, _ = dial_handshake(s, "")
        assert isinstance(answer, p.Bye) and answer.reason == "rejected: wrong call token"
    # A hello and then no proof at all: closed at the hello deadline (1 s here).
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(p.encode(p.Hello(transcribes=False, nonce=handshake.new_nonce())))
        reader = Reader(s)
        assert isinstance(reader.next(), p.Hello)
        t0 = time.monotonic()
        assert reader.next() is None
        assert time.monotonic() - t0 < 2.5
    # Skipping the hello: a protocol error.
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(p.encode(p.Auth(proof="0" * 64)))
        assert Reader(s).next() is None
    # An old (version 1) dialer that sends its token in the hello is told why.
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        body = json.dumps(
            {
                "protocol": p.PROTOCOL_NAME,
                "version": 1,
                "token": listening.token,
                "transcribes": False,
            }
        ).encode()
        s.sendall(p.HEADER.pack(p.MessageType.HELLO, len(body)) + body)
        answer = Reader(s).next()
        assert isinstance(answer, p.Bye) and "unsupported protocol version 1" in answer.reason
    wait_until(lambda: listening.rejected_connections == 4, what="four rejections")
    assert listening.state == "listening"


class Proxy:
    """A man in the middle on loopback: forwards one connection both ways, records what
    the dialer sent, and may rewrite the dialer's first message."""

    def __init__(self, upstream: str, rewrite_first=None) -> None:
        self.upstream = upstream
        self.rewrite_first = rewrite_first
        self.sent_by_dialer = bytearray()
        self.server = gsocket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        client, _ = self.server.accept()
        host, port = self.upstream.rsplit(":", 1)
        upstream = gsocket.create_connection((host, int(port)))
        pumps = [
            gevent.spawn(self._pump, client, upstream, True),
            gevent.spawn(self._pump, upstream, client, False),
        ]
        gevent.joinall(pumps, raise_error=False)
        client.close()
        upstream.close()

    def _pump(self, src, dst, from_dialer: bool) -> None:
        first = from_dialer and self.rewrite_first is not None
        decoder = p.Decoder()
        try:
            while data := src.recv(65536):
                if from_dialer:
                    self.sent_by_dialer += data
                if first:  # hold bytes until the whole first message is in
                    messages = decoder.feed(data)
                    if not messages:
                        continue
                    data = p.encode(self.rewrite_first(messages[0]))
                    first = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(gsocket.SHUT_RDWR)

    def close(self) -> None:
        self.greenlet.kill()
        self.server.close()


def test_a_replayed_handshake_never_connects(nodes):
    a, b = nodes
    first = listen(a)
    proxy = Proxy(first.local_address)
    call = dial(b, proxy.address, first.token)
    wait_state(call, {"connected"})
    gevent.sleep(0.2)  # some audio and pings go by too
    call.end()
    wait_state(first, {"ended"})
    proxy.close()
    recorded = bytes(proxy.sent_by_dialer)
    assert first.token.encode() not in recorded  # the token itself never crossed the wire

    # The same call token on a new listener (as if the attacker waited for a re-listen):
    # the recorded proof was for the old listener's nonce, so it is refused.
    second = listen(a)
    second.token = first.token
    host, port = second.local_address.rsplit(":", 1)
    with gsocket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(recorded)
        reader = Reader(s)
        assert isinstance(reader.next(), p.Hello)
        answer = reader.next()
    assert isinstance(answer, p.Bye) and answer.reason == "rejected: wrong call token"
    assert second.state == "listening" and second.rejected_connections == 1
    second.end()


def test_a_codec_downgrade_in_the_middle_breaks_the_proofs(nodes):
    a, b = nodes
    listening = listen(a)

    def downgrade(hello: p.Hello) -> p.Hello:
        return p.Hello(
            transcribes=hello.transcribes,
            codecs=("pcm16", "x-weak"),
            node=hello.node,
            nonce=hello.nonce,
        )

    proxy = Proxy(listening.local_address, rewrite_first=downgrade)
    call = dial(b, proxy.address, listening.token)
    assert wait_state(call, {"failed"}).end_reason == "rejected: wrong call token"
    assert listening.state == "listening" and listening.rejected_connections == 1
    proxy.close()


@pytest.mark.parametrize("forgery", ["wrong-token", "reflected", "garbage-type"])
def test_a_listener_that_cannot_prove_the_token_is_detected(nodes, forgery):
    """Someone listening at the dialed address without the token (a stolen address, a
    spoofed host) cannot complete the handshake, so the dialer never sends it audio."""
    _, b = nodes
    server = gsocket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    got_audio = []

    def impostor() -> None:
        conn, _ = server.accept()
        reader = Reader(conn)
        theirs = reader.next()
        mine = p.Hello(transcribes=True, nonce=handshake.new_nonce())
        conn.sendall(p.encode(mine))
        auth = reader.next()
        h = handshake.transcript_hash(theirs, mine)
        if forgery == "wrong-token":
            reply = p.Auth(proof=handshake.proof("guess", handshake.LISTENER, h))
        elif forgery == "reflected":
            reply = p.Auth(proof=auth.proof)
        else:
            reply = p.Hello(transcribes=True, nonce=handshake.new_nonce())
        conn.sendall(p.encode(reply))
        conn.settimeout(1.5)
        try:
            while (m := reader.next()) is not None:
                got_audio.append(isinstance(m, p.Audio))
        except OSError:
            pass
        conn.close()

    g = gevent.spawn(impostor)
    call = dial(b, f"127.0.0.1:{server.getsockname()[1]}", "the-real-token")
    failed = wait_state(call, {"failed"})
    assert failed.end_reason == "handshake_failed: listener could not prove the call token"
    g.join(timeout=3)
    server.close()
    assert not any(got_audio)


def test_two_right_callers_at_once_only_one_connects(nodes):
    a, b = nodes
    listening = listen(a)
    calls = [dial(b, listening.local_address, listening.token) for _ in range(2)]
    wait_until(lambda: all(c.state in ("connected", "failed") for c in calls), what="settled")
    assert sorted(c.state for c in calls) == ["connected", "failed"]
    for c in calls:
        c.end()


@pytest.mark.parametrize("pcm_only", ["dialer", "listener"])
def test_a_node_without_opus_gets_pcm16_both_ways(tmp_path, pcm_only):
    a = make_node(tmp_path, "a", **({"IM_CODECS": "pcm16"} if pcm_only == "listener" else {}))
    b = make_node(tmp_path, "b", **({"IM_CODECS": "pcm16"} if pcm_only == "dialer" else {}))
    try:
        listening = listen(a)
        dialing = dial(b, listening.local_address, listening.token)
        wait_state(dialing, {"connected"})
        wait_state(listening, {"connected"})
        assert dialing.codec == listening.codec == "pcm16"
        wait_until(
            lambda: (
                listening.sink.playout.frames_played > 10
                and dialing.sink.playout.frames_played > 10
            ),
            what="frames played each way",
        )
        assert listening.sink.playout.frames_undecodable == 0
    finally:
        b.close()
        a.close()


def test_a_flood_of_silent_connections_is_bounded_and_the_caller_still_gets_in(nodes):
    a, b = nodes
    listening = listen(a)
    host, port = listening.local_address.rsplit(":", 1)
    silent = [gsocket.create_connection((host, int(port))) for _ in range(24)]
    try:
        # 16 may wait in their handshake; the other 8 are turned away at once.
        wait_until(lambda: listening.rejected_connections >= 8, what="the surplus turned away")
        assert listening.state == "listening"
        # The silent ones hit the hello deadline (1 s here); then the right caller gets in.
        wait_until(lambda: listening.rejected_connections == 24, what="all 24 turned away")
        dialing = dial(b, listening.local_address, listening.token)
        wait_state(dialing, {"connected"})
        assert listening.rejected_connections == 24
    finally:
        for s in silent:
            s.close()


def test_pings_do_not_stretch_the_hello_deadline(nodes):
    """Before the handshake is done, a connection that only pings is still a connection that
    said nothing: it is turned away at the hello deadline (1 s here)."""
    a, _ = nodes
    listening = listen(a)
    host, port = listening.local_address.rsplit(":", 1)
    sock = gsocket.create_connection((host, int(port)))
    try:
        started = time.monotonic()
        for n in range(15):  # 3 s of pings, every 0.2 s
            try:
                sock.sendall(p.encode(p.Ping(id=n, sent_us=0)))
            except OSError:
                break
            if listening.rejected_connections:
                break
            gevent.sleep(0.2)
        assert listening.rejected_connections == 1
        assert time.monotonic() - started < 2.0
        assert listening.state == "listening"
    finally:
        sock.close()


def hold_handshakes(address: str, source: str, count: int, hello: bool, stop) -> None:
    """Keep ``count`` connections from ``source`` stalled in their handshake (silent, or
    after a hello, which needs no token) until ``stop`` is set, opening a new one whenever
    the listener drops one: what an attacker without the token does to lock a call."""
    host, port = address.rsplit(":", 1)
    held: list = []
    while not stop.is_set():
        held = [s for s in held if not _closed_by_peer(s)]
        while len(held) < count and not stop.is_set():
            s = gsocket.socket()
            s.bind((source, 0))
            s.connect((host, int(port)))
            if hello:
                s.sendall(p.encode(p.Hello(transcribes=False, nonce=handshake.new_nonce())))
            held.append(s)
        gevent.sleep(0.01)
    for s in held:
        s.close()


def _closed_by_peer(s) -> bool:
    s.setblocking(False)
    try:
        while data := s.recv(4096):
            del data
        return True  # orderly close
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("hello", [False, True], ids=["silent", "after-hello"])
@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.1"], ids=["other-host", "same-host"])
def test_connections_stalled_in_their_handshake_cannot_lock_the_caller_out(nodes, source, hello):
    """All 16 handshake places held (and re-taken as soon as the listener drops one) by
    connections that never prove the token: the caller with the token still gets in. Before,
    it was refused at once, with a misleading "a TLS listener?" guess."""
    a, b = nodes
    listening = listen(a)
    stop = gevent.event.Event()
    attacker = gevent.spawn(hold_handshakes, listening.local_address, source, 16, hello, stop)
    try:
        wait_until(lambda: listening.listener.pending >= 4, what="the attacker's connections")
        gevent.sleep(0.2)
        dialing = dial(b, listening.local_address, listening.token)
        wait_state(dialing, {"connected", "failed"})
        assert dialing.state == "connected", dialing.end_reason
    finally:
        stop.set()
        attacker.join(5)


def test_a_caller_turned_away_for_want_of_places_is_told_why(nodes):
    """Every place held by connections that proved the token is impossible to arrange from
    outside, so this fills them from inside: the refused dialer reads the reason instead of
    guessing at TLS from a silent close."""
    a, b = nodes
    listening = listen(a)
    for n in range(16):
        fake = gevent.spawn(gevent.sleep, 30)
        listening.listener._pending[fake] = Pending(f"10.0.0.{n}", proven=True)
    try:
        dialing = dial(b, listening.local_address, listening.token)
        wait_state(dialing, {"failed"})
        assert dialing.end_reason == "rejected: too many connections still handshaking"
    finally:
        for g in list(listening.listener._pending):
            g.kill(block=False)


def test_a_listening_call_outlives_running_out_of_descriptors(nodes):
    """accept() failing with EMFILE (every descriptor taken, e.g. by idle HTTP connections)
    used to end the accept loop silently: the call still said `listening` and never accepted
    again. It must back off, keep listening, and take the caller once descriptors return."""
    import resource

    a, b = nodes
    listening = listen(a)
    host, port = listening.local_address.rsplit(":", 1)
    early = gsocket.socket()  # its descriptor is taken before they run out
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hogs = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
        with contextlib.suppress(OSError):
            while True:
                hogs.append(open("/dev/null", "rb"))  # noqa: SIM115 - held on purpose
        early.connect((host, int(port)))  # queued by the kernel; accept() now fails EMFILE
        gevent.sleep(0.5)
    finally:
        for f in hogs:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    early.close()
    assert listening.state == "listening"
    dialing = dial(b, listening.local_address, listening.token)
    wait_state(dialing, {"connected", "failed"})
    assert dialing.state == "connected", dialing.end_reason


def test_an_ended_session_keeps_its_rejected_connection_and_segment_counts(nodes):
    """Once a call ended, its view came from the store, which kept neither count: an ended
    call that had been probed by wrong callers looked as if nobody had tried."""
    a, b = nodes
    listening = listen(a)
    wrong = dial(b, listening.local_address, "not-the-token")
    wait_state(wrong, {"failed"})
    wait_until(lambda: listening.rejected_connections == 1, what="the wrong caller counted")
    listening.end("hangup")
    client = create_app(a).test_client()
    for view in (
        client.get(f"/sessions/{listening.id}").get_json(),
        next(s for s in client.get("/sessions").get_json()["sessions"] if s["id"] == listening.id),
    ):
        assert view["state"] == "ended"
        assert view["stats"]["rejected_connections"] == 1
        assert view["stats"]["segments"] == {"local": 0, "remote": 0}
        assert view["stats"]["segments_refused"] == 0
