"""Limits and backpressure: a full node refuses new calls and changes nothing; a peer that
stops reading can neither grow our memory nor stall the node's other calls."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import looped_clip, node_processes, wait_state, wait_until

from service.config import ConfigError, load_settings
from service.localnodes import start_call

SILENT = {"input": "silence", "output": None}
FRAMES_PER_S = 50  # one 20 ms frame each way, silence included


# -- maximum concurrent calls ----------------------------------------------------------------


@pytest.fixture
def node(node_factory):
    return node_factory(IM_MAX_CALLS="2")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listen(client, port: int = 0):
    return client.post(
        "/sessions", json={"mode": "listen", "port": port, "input": "silence", "output": None}
    )


def test_a_full_node_refuses_new_calls_with_503_and_changes_nothing(client):
    first, second = listen(client), listen(client)
    assert (first.status_code, second.status_code) == (201, 201)
    before = client.get("/sessions").get_json()["sessions"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = listen(client, port)
    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "too_many_calls"
    assert "IM_MAX_CALLS" in refused.get_json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    dial = client.post(
        "/sessions",
        json={
            "mode": "dial",
            "peer": first.get_json()["address"],
            "token": "t",
            "input": "silence",
        },
    )
    assert dial.status_code == 503 and dial.get_json()["error"]["code"] == "too_many_calls"
    # Nothing was opened, stored or started by the refusals.
    assert port_is_free(port)
    assert client.get("/sessions").get_json()["sessions"] == before
    assert client.get("/healthz").get_json()["live_calls"] == 2

    # Ending a call frees its place.
    assert client.delete(f"/sessions/{first.get_json()['id']}").status_code == 200
    assert listen(client, port).status_code == 201
    assert listen(client).status_code == 503


def test_the_call_limit_is_validated():
    assert load_settings({}).max_calls == 32
    for bad in ("0", "-1", "many", "100000"):
        with pytest.raises(ConfigError, match="IM_MAX_CALLS"):
            load_settings({"IM_MAX_CALLS": bad})


# -- a peer that stops reading ---------------------------------------------------------------


@pytest.fixture
def three_nodes(tmp_path, model_dir):
    # PCM16, the heaviest stream (~33 kB/s each way), so a slow reader bites soon. SIGKILL
    # at the end, which ends a frozen process too.
    env = {"IM_CODECS": "pcm16"}
    with node_processes(tmp_path, ("A", "B", "C"), model_dir, env, kill=True) as nodes:
        yield nodes


def assert_still_flowing(node, call_id: str, before: dict, during: dict, window: float, why: str):
    """The other call never paused: audio both ways at (nearly) the real-time rate, and the
    node's own speech in it still transcribed."""
    for key in ("frames_sent", "frames_received"):
        rate = (during[key] - before[key]) / window
        assert rate > 0.8 * FRAMES_PER_S, f"{key}: {rate:.1f} frames/s {why}"
    wait_until(
        lambda: node.call("GET", f"/sessions/{call_id}")["stats"]["segments"]["local"] >= 1,
        30,
        "A to transcribe its speech in the other call",
    )


def test_a_frozen_peer_is_dropped_and_the_other_call_keeps_flowing(three_nodes, tmp_path):
    """B is SIGSTOPped mid-call: it stops reading (and sending) but its socket stays open.
    A must end that call as peer_lost within about the 5 s liveness window, while its call
    with C keeps moving audio both ways in real time and A keeps transcribing it."""
    a, b, c = three_nodes
    speech = a.media(looped_clip(tmp_path / "jfk-x3.wav", 3))
    # A is silent towards B, so ending that call waits for no transcription: what is timed
    # is how soon the hang is noticed.
    a1, b1 = start_call(a, b, listen=SILENT, dial=SILENT)
    a2, _c2 = start_call(a, c, listen={"input": speech, "output": None}, dial=SILENT)
    time.sleep(1.0)

    before = a.call("GET", f"/sessions/{a2['id']}")["stats"]
    rss_before = a.memory_kib()["rss"]
    b.freeze()
    frozen_at = time.monotonic()
    try:
        ended = wait_state(a, a1["id"], {"ended"}, timeout=15)
        dropped_after = time.monotonic() - frozen_at
        during = a.call("GET", f"/sessions/{a2['id']}")["stats"]
        window = time.monotonic() - frozen_at
        rss_after = a.memory_kib()["rss"]
    finally:
        b.thaw()
    assert ended["end_reason"] == "peer_lost"
    assert dropped_after < 8  # 5 s of silence, plus polling and a loaded test machine

    assert_still_flowing(a, a2["id"], before, during, window, "while B was frozen")
    print(
        f"\ndropped the frozen peer after {dropped_after:.1f} s; "
        f"A's RSS {rss_before // 1024} -> {rss_after // 1024} MiB"
    )
    # B, thawed, finds its call gone and is itself fine.
    wait_state(b, b1["id"], {"ended"}, timeout=15)  # B notices A hung up on it
    assert b.request("GET", "/healthz").status_code == 200


class StallingRelay:
    """A TCP relay between a dialer and a listener that, on demand, reads the listener's
    side at a trickle (`TRICKLE_BPS`) while still forwarding the dialer's side at full
    speed: a peer that keeps talking but barely listens. The dialer behind it still gets
    a frame every few seconds, so neither end can call it silent.

    The relay only copies bytes, so it passes whatever handshake the nodes speak."""

    TRICKLE_BPS = 400  # A sends ~33 000 B/s of audio

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.stall = threading.Event()
        self.done = threading.Event()
        self.upstream_port = 0
        self._socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.server.accept()
        upstream = socket.socket()
        # A small receive window, so the listener's send buffer fills in seconds, not minutes.
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        upstream.connect(self.target)
        self.upstream_port = upstream.getsockname()[1]
        self._socks += [client, upstream]
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, may_stall: bool) -> None:
        try:
            while not self.done.is_set():
                if may_stall and self.stall.is_set():
                    data = src.recv(self.TRICKLE_BPS // 4)
                    time.sleep(0.25)
                else:
                    data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.done.set()
        for s in self._socks:
            s.close()


def queued_bytes(local_port: int, remote_port: int) -> int | None:
    """Bytes our kernel holds for a TCP peer that it has not acknowledged: the send
    queue of the connection from /proc/net/tcp (the memory and the latency a slow
    reader costs us, which no RSS figure shows). None when no such connection is listed
    (never there, or gone since): that is no measurement, not an empty queue."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
            remote_port
        ):
            return int(fields[4].split(":")[0], 16)
    return None


QUEUE_BOUND = 256 * 1024  # ~8 s of audio: beyond this a "live" call is not live any more


def test_a_peer_that_talks_but_barely_listens_costs_bounded_memory(three_nodes, tmp_path):
    """B's link to A goes through a relay that, once stalled, reads A's side at 400 B/s
    (A sends ~33 kB/s) but forwards B's side in full, so neither end sees silence. What
    A queues for B must stay bounded (by dropping, or by ending the call: the link's
    choice), and A's other call must keep flowing and being transcribed."""
    a, b, c = three_nodes
    speech = a.media(looped_clip(tmp_path / "jfk-x3.wav", 3))
    # A speaks in both calls: its transcripts for B go down the clogged link too.
    talking = {"input": speech, "output": None}
    a1 = a.call("POST", "/sessions", 201, json={"mode": "listen", "port": 0, **talking})
    relay = StallingRelay(a1["address"])
    try:
        b.call(
            "POST",
            "/sessions",
            201,
            json={"mode": "dial", "peer": relay.address, "token": a1["token"], **SILENT},
        )
        wait_state(a, a1["id"], {"connected"}, timeout=15)  # through the relay
        a2, _ = start_call(a, c, listen=talking, dial=SILENT)
        a_port = int(a1["address"].rsplit(":", 1)[1])
        relay.stall.set()
        stalled_at = time.monotonic()
        before = a.call("GET", f"/sessions/{a2['id']}")["stats"]

        samples = []
        while time.monotonic() - stalled_at < 15:
            samples.append(queued_bytes(a_port, relay.upstream_port))
            time.sleep(0.2)
        during = a.call("GET", f"/sessions/{a2['id']}")["stats"]
        window = time.monotonic() - stalled_at
        # The other call keeps flowing and A keeps transcribing it...
        assert_still_flowing(a, a2["id"], before, during, window, "while B stalled")
        # ...and what waits for the slow reader is bounded, not the whole call so far.
        stuck = a.call("GET", f"/sessions/{a1['id']}")
        # The connection is there when the stall starts (it may close later: the link's
        # choice), and what it queued is seen: a bound on nothing measured proves nothing.
        assert samples[0] is not None, (
            f"no connection 127.0.0.1:{a_port} -> :{relay.upstream_port} in /proc/net/tcp"
        )
        peak = max(q for q in samples if q is not None)
        assert peak > 0, "nothing ever queued for a peer reading 400 B/s: the wrong socket?"
        print(f"\npeak queued for the slow reader: {peak} bytes; that call: {stuck['state']}")
        assert peak <= QUEUE_BOUND, f"{peak} bytes queued for a peer reading 400 B/s"
        # The link's choice: a peer that has not taken a byte for 2 s is not in the call.
        assert stuck["state"] == "ended" and stuck["end_reason"] == "peer_lost", stuck
    finally:
        relay.close()
