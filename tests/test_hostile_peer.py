"""A peer that proved the call token and then misbehaves: what it sends means whatever it
likes (sequence numbers, times, texts, its pace). Each test drives a real node process over
real TCP as such a peer, while a second, healthy call runs on the same node, and checks that
only the hostile call suffers: the node keeps answering (/healthz probed every 20 ms), the
healthy call keeps moving audio, and nothing the peer sent is stored or rendered as more
than data.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from helpers import wait_until
from wire import dial_handshake

from service.calls.peer import SEGMENT_BURST
from service.localnodes import NodeProcess, start_call
from service.transport import protocol as p

pytestmark = pytest.mark.slow

SILENT = {"input": "silence", "output": None}
FRAME = bytes(640)  # 20 ms of PCM16 silence


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, model_dir) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    root = tmp_path_factory.mktemp("hostile")
    env = {"IM_HELLO_TIMEOUT_S": "2", "IM_CODECS": "pcm16"}
    a = NodeProcess("A", root / "a", env=env, model_dir=model_dir)
    b = NodeProcess("B", root / "b", env=env, model_dir=model_dir)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.kill()
        b.kill()


class HealthProbe:
    """GET /healthz every 20 ms from a thread; the slowest answer (a timeout counts as its
    full 2 s) is what the hub's responsiveness was while it ran."""

    def __init__(self, node: NodeProcess) -> None:
        self.url = node.url + "/healthz"
        self.worst = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        http = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                http.get(self.url, timeout=2).raise_for_status()
            except requests.RequestException:
                self.failures += 1
            self.worst = max(self.worst, time.monotonic() - started)
            time.sleep(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def healthy_call(a: NodeProcess, b: NodeProcess) -> Iterator[str]:
    """A call between A and B that should not notice anything; yields A's call id."""
    listening, dialing = start_call(a, b, listen=SILENT, dial=SILENT)
    try:
        yield listening["id"]
    finally:
        b.request("DELETE", f"/sessions/{dialing['id']}")


def frames_received(node: NodeProcess, call_id: str) -> int:
    return node.call("GET", f"/sessions/{call_id}")["stats"]["frames_received"]


def assert_flowing(node: NodeProcess, call_id: str, before: int, seconds: float) -> None:
    """The healthy call is still up and received (nearly) 50 frames a second throughout."""
    state = node.call("GET", f"/sessions/{call_id}")
    assert state["state"] == "connected", state["end_reason"]
    rate = (state["stats"]["frames_received"] - before) / seconds
    assert rate > 40, f"the other call received {rate:.0f} frames/s"


@contextmanager
def hostile_peer(node: NodeProcess) -> Iterator[tuple[socket.socket, dict]]:
    """A listening call on ``node`` and a socket through its handshake, as its peer."""
    call = node.call("POST", "/sessions", 201, json={"mode": "listen", "port": 0, **SILENT})
    host, port = call["address"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    answer, _ = dial_handshake(sock, call["token"], transcribes=True)
    assert isinstance(answer, p.Auth), answer
    wait_until(
        lambda: node.call("GET", f"/sessions/{call['id']}")["state"] == "connected",
        5,
        "the hostile call to connect",
    )
    try:
        yield sock, call
    finally:
        sock.close()
        node.request("DELETE", f"/sessions/{call['id']}")


def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Write ``data`` again and again for ``seconds`` or until the node hangs up."""
    sent = 0
    deadline = time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            sock.sendall(data)
        except TimeoutError:
            continue
        except OSError:
            break
        sent += 1
    return sent


def test_two_frames_with_sequence_numbers_far_apart_do_not_freeze_the_node(nodes):
    """seq 2**31 then 0 in one write, before the first playout tick: the old catch-up loop
    walked the 2**31 numbers between them on the hub; /healthz went dead at once and the
    node's other calls ended peer_lost."""
    a, b = nodes
    with healthy_call(a, b) as other, hostile_peer(a) as (sock, call):
        before = frames_received(a, other)
        with HealthProbe(a) as probe:
            sock.sendall(
                p.encode(p.Audio(seq=2**31, capture_time_us=0, payload=FRAME))
                + p.encode(p.Audio(seq=0, capture_time_us=0, payload=FRAME))
            )
            for seq in (2**32 - 1, 7, 2**31 + 5, 1):  # and again, after the first tick
                time.sleep(0.1)
                sock.sendall(p.encode(p.Audio(seq=seq, capture_time_us=2**63 - 1, payload=FRAME)))
            time.sleep(2.0)
        assert probe.failures == 0 and probe.worst < 0.5, f"/healthz took {probe.worst:.2f} s"
        assert_flowing(a, other, before, 2.4)
        assert a.call("GET", f"/sessions/{call['id']}")["state"] == "connected"


def test_a_transcript_flood_ends_that_call_only_and_stores_a_bounded_amount(nodes):
    """Transcripts as fast as the socket takes them: the old receive loop never yielded
    while bytes were waiting and committed every one (the hub stalled for ~27 s, another
    call ended peer_lost, the database grew by 141 MB)."""
    a, b = nodes
    with healthy_call(a, b) as other, hostile_peer(a) as (sock, call):
        before = frames_received(a, other)
        batch = b"".join(
            p.encode(p.Transcript(no=n, start=0.0, end=0.1, text="flood " * 100))
            for n in range(200)
        )
        with HealthProbe(a) as probe:
            started = time.monotonic()
            send_for(sock, batch, seconds=6.0)
            flooded_for = time.monotonic() - started
            ended = a.call("GET", f"/sessions/{call['id']}")
            time.sleep(max(0.0, 3.0 - flooded_for))
        assert ended["end_reason"] == "peer_flood", ended["end_reason"]
        assert flooded_for < 5.0
        stored = ended["stats"]["segments"]["remote"]
        assert 0 < stored <= SEGMENT_BURST + 5, stored
        assert probe.failures == 0 and probe.worst < 0.5, f"/healthz took {probe.worst:.2f} s"
        assert_flowing(a, other, before, time.monotonic() - started)


def test_an_audio_flood_ends_that_call_only(nodes):
    """Audio far faster than real time costs the node decoding and VAD work per frame; a
    peer gets real time and a burst, then its call ends as peer_flood."""
    a, b = nodes
    with healthy_call(a, b) as other, hostile_peer(a) as (sock, call):
        before = frames_received(a, other)
        batch = b"".join(
            p.encode(p.Audio(seq=n, capture_time_us=0, payload=FRAME)) for n in range(500)
        )
        with HealthProbe(a) as probe:
            started = time.monotonic()
            send_for(sock, batch, seconds=5.0)
            ended = a.call("GET", f"/sessions/{call['id']}")
            time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        assert ended["end_reason"] == "peer_flood", ended["end_reason"]
        assert probe.failures == 0 and probe.worst < 0.5, f"/healthz took {probe.worst:.2f} s"
        assert_flowing(a, other, before, time.monotonic() - started)


FORGED = (
    "hello\nLocal: I agree to everything\n\n2\n00:00:00,000 --> 00:00:09,000\n"
    "Local: a forged cue\r\n\u2028\x1b[31mred\x1b[0m \u202eevil\x07 <b>&"
)


def test_peer_text_and_times_are_data_every_export_renders_one_line_per_segment(nodes):
    """Line breaks in a peer's text forged `Local:` lines in the text export and whole cues
    in SRT; a blank line cut WebVTT short; escapes passed through. A start of 1e306 made
    the text, SRT and WebVTT exports answer 500 for good."""
    a, _ = nodes
    with hostile_peer(a) as (sock, call):
        sock.sendall(
            p.encode(p.Transcript(no=0, start=0.1, end=0.5, text=FORGED))
            + p.encode(p.Transcript(no=1, start=1e306, end=1e306, text="far future"))
            + p.encode(p.Transcript(no=2, start=0.6, end=1e300, text="forever"))
            + p.encode(p.Transcript(no=3, start=0.7, end=0.9, text="after"))
        )
        wait_until(
            lambda: a.call("GET", f"/sessions/{call['id']}")["stats"]["segments"]["remote"] == 2,
            5,
            "the two good segments",
        )
        stats = a.call("GET", f"/sessions/{call['id']}")["stats"]
        assert stats["segments_refused"] == 2
        transcript = f"/sessions/{call['id']}/transcript"
        segments = a.call("GET", transcript)["segments"]
        assert [s["text"] for s in segments] == [
            "hello Local: I agree to everything 2 00:00:00,000 --> 00:00:09,000 Local: "
            "a forged cue red evil <b>&",
            "after",
        ]
        text = a.call("GET", transcript, params={"format": "text"})
        assert [line.split("]")[1].split(":")[0] for line in text.splitlines()] == [
            " Remote",
            " Remote",
        ]
        srt = a.call("GET", transcript, params={"format": "srt"})
        assert srt.count("-->") == 2 and "\n\n" in srt and srt.count("\n\n") == 1
        vtt = a.call("GET", transcript, params={"format": "vtt"})
        assert vtt.count("-->") == 2 and vtt.count("\n\n") == 2, vtt  # header + one gap
        for body in (text, srt, vtt):
            assert not any(c in body for c in "\x1b\x07\r\u2028\u202e")


def test_a_bye_reason_cannot_forge_log_lines_and_is_stored_as_one_line(nodes):
    a, _ = nodes
    forged = "x\n2026-12-01 00:00:00,000 ERROR service: forged by the peer"
    with hostile_peer(a) as (sock, call):
        sock.sendall(p.encode(p.Bye(reason=forged)))
        ended = wait_until(
            lambda: (s := a.call("GET", f"/sessions/{call['id']}"))["state"] == "ended" and s,
            5,
            "the call to end",
        )
    assert "\n" not in ended["end_reason"] and ended["end_reason"].startswith("peer_x 2026")
    assert not any(
        line.startswith("2026-12-01 00:00:00,000 ERROR") for line in a.log_lines("ERROR")
    )


def test_stray_messages_mid_call_end_the_call_and_log_a_bounded_amount(nodes):
    """20,000 stray hellos made 20,000 WARNING lines in 2 s; a real peer sends none."""
    a, _ = nodes
    with hostile_peer(a) as (sock, call):
        before = len(a.log_lines("WARNING"))
        stray = p.encode(p.Hello(transcribes=True, nonce="c" * 64)) * 1000
        with contextlib.suppress(OSError):  # the node hangs up on the flood
            for _ in range(20):
                sock.sendall(stray)
        ended = wait_until(
            lambda: (s := a.call("GET", f"/sessions/{call['id']}"))["state"] == "ended" and s,
            5,
            "the call to end",
        )
        lines = len(a.log_lines("WARNING")) - before
    assert ended["end_reason"] == "peer_flood"
    assert lines < 20, f"{lines} warning lines for 20,000 stray messages"


def test_turned_away_connections_are_logged_at_a_bounded_rate(nodes):
    """Every wrong caller used to write its own WARNING line: a log anyone could fill."""
    a, _ = nodes
    call = a.call("POST", "/sessions", 201, json={"mode": "listen", "port": 0, **SILENT})
    host, port = call["address"].rsplit(":", 1)
    before = len(a.log_lines("WARNING"))
    for _ in range(300):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            dial_handshake(sock, "not-the-token")
    wait_until(
        lambda: a.call("GET", f"/sessions/{call['id']}")["stats"]["rejected_connections"] == 300,
        10,
        "all 300 turned away",
    )
    lines = len(a.log_lines("WARNING")) - before
    a.request("DELETE", f"/sessions/{call['id']}")
    assert lines < 20, f"{lines} warning lines for 300 wrong callers"


@pytest.mark.parametrize("kind", [p.Ping, p.Pong])
def test_a_ping_or_pong_flood_leaves_the_node_responsive(nodes, kind):
    """Pings and pongs are handled inside the link, below the call: a flood of them was
    read and answered (196,656 pongs in one run) without the hub getting a turn, for 7 s."""
    a, b = nodes
    with healthy_call(a, b) as other, hostile_peer(a) as (sock, call):
        before = frames_received(a, other)
        batch = b"".join(p.encode(kind(id=n, sent_us=0)) for n in range(1000))
        with HealthProbe(a) as probe:
            started = time.monotonic()
            send_for(sock, batch, seconds=3.0)
        assert probe.failures == 0 and probe.worst < 0.5, f"/healthz took {probe.worst:.2f} s"
        assert_flowing(a, other, before, time.monotonic() - started)
        link = a.call("GET", f"/sessions/{call['id']}")["stats"]["link"]
        if kind is p.Ping:
            assert link["pings_answered"] <= 20 + 10 * 4, link
