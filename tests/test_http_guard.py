"""The control API's outer walls: the HTTP server's bounds (connections, idle time, head
size) on real node processes, and the Host/Origin guard against DNS rebinding and
cross-site writes.

The descriptor test is the attack as it was found: 1100 silent TCP connections against a
node whose descriptor limit is 1024 (`ulimit -n 1024` applied to the node process only).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import NodeFactory, wait_state, wait_until

from service.api import create_app
from service.config import load_settings
from service.localnodes import NodeProcess

IDLE_S = 2.0  # IM_HTTP_IDLE_TIMEOUT_S of the node processes here
SLACK_S = 2.0  # a loaded CI machine's scheduling delays
LISTEN = {"mode": "listen", "port": 0, "input": "silence", "output": None}


# --- helpers --------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_fds(pid: int) -> list[str]:
    """What each of `pid`'s descriptors is open on, for a failure's message."""
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # closed while listing
            targets.append(os.readlink(fd))
    return sorted(targets)


def raw_exchange(port: int, data: bytes, timeout: float = IDLE_S + SLACK_S + 3) -> bytes:
    """Send `data` on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def closed_within(s: socket.socket, limit: float) -> float:
    """Seconds until the server closes `s` (recv returns b"" or a reset); fails past `limit`."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for over {limit} s") from None
    return time.monotonic() - t0


def open_silent(port: int, count: int, settle_s: float = 5.0) -> list[socket.socket]:
    """`count` connections that never send a byte (non-blocking connects, so that a server
    that stopped accepting cannot stall the test); waits up to `settle_s` for them."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    poller = select.poll()  # select() cannot watch descriptors above 1023
    for s in socks:
        poller.register(s, select.POLLOUT)
    pending = len(socks)
    deadline = time.monotonic() + settle_s
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            poller.unregister(fd)
            pending -= 1
    return socks


def settled_fd_count(pid: int, timeout: float = 15.0) -> int:
    """The node's descriptor count once it stops changing: the server has taken in every
    connection it is going to."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = fd_count(pid)
        if now == count:
            break
        count = now
    return count


def raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the test process may open only {hard} descriptors; {needed} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def no_tracebacks(node: NodeProcess) -> None:
    text = node.log_path.read_text(errors="replace")
    assert "Traceback" not in text, node.log_tail(60)


# --- the server's bounds, on real node processes ------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory, model_dir) -> NodeProcess:
    """A node with the default connection bound, a 2 s idle timeout, and 1024 descriptors."""
    node = NodeProcess(
        "L",
        tmp_path_factory.mktemp("limited"),
        env={"IM_HTTP_IDLE_TIMEOUT_S": str(IDLE_S)},
        model_dir=model_dir,
    )
    node.command_prefix = ["sh", "-c", 'ulimit -n 1024 && exec "$@"', "node"]
    node.start()
    yield node
    node.stop()


@pytest.mark.slow
def test_1100_silent_connections_neither_exhaust_descriptors_nor_lock_out_the_api(limited):
    raise_own_fd_limit(1400)
    baseline = fd_count(limited.pid)
    limits = Path(f"/proc/{limited.pid}/limits").read_text()
    assert int(limits.split("Max open files")[1].split()[0]) == 1024
    socks = open_silent(limited.port, 1100)
    try:
        worst_fds = settled_fd_count(limited.pid)
        t0 = time.monotonic()
        try:
            health = requests.get(limited.url + "/healthz", timeout=IDLE_S + SLACK_S + 3)
        except requests.RequestException as exc:
            raise AssertionError(
                f"/healthz unanswered under 1100 silent connections: {exc}"
            ) from None
        waited = time.monotonic() - t0
        assert health.status_code == 200
        assert waited < IDLE_S + SLACK_S, f"/healthz took {waited:.1f} s"
        # A call can still be created (its listening socket needs a descriptor too).
        created = limited.call("POST", "/sessions", 201, json=LISTEN, timeout=IDLE_S + 5)
        limited.call("DELETE", f"/sessions/{created['id']}", timeout=IDLE_S + 5)
        worst_fds = max(worst_fds, fd_count(limited.pid))
    finally:
        for s in socks:
            s.close()
    # Default bound (256) plus what is in transit (max_accept) plus the call's sockets.
    assert worst_fds <= baseline + 256 + 16 + 16, (baseline, worst_fds)
    # Recovered fully: a real call between two sessions of this node connects.
    listen = limited.call("POST", "/sessions", 201, json=LISTEN)
    dial = limited.call(
        "POST",
        "/sessions",
        201,
        json={
            "mode": "dial",
            "peer": listen["address"],
            "token": listen["token"],
            "input": "silence",
            "output": None,
        },
    )
    wait_state(limited, dial["id"], {"connected"}, timeout=15)
    limited.request("DELETE", f"/sessions/{dial['id']}")
    limited.request("DELETE", f"/sessions/{listen['id']}")
    # What is left open settles: the calls' sockets close as each side hangs up, and the
    # server drops this client's idle keep-alive connections after IDLE_S. Anything still
    # open past that is a leak.
    wait_until(
        lambda: fd_count(limited.pid) <= baseline + 8,
        timeout=IDLE_S + SLACK_S + 5,
        what=lambda: f"descriptors back to {baseline} + 8: {open_fds(limited.pid)}",
        step=0.25,
    )
    no_tracebacks(limited)


@pytest.mark.slow
def test_silent_slow_and_idle_keepalive_connections_are_closed(limited):
    limit = IDLE_S + SLACK_S
    with socket.create_connection(("127.0.0.1", limited.port)) as silent:
        assert closed_within(silent, limit) >= IDLE_S - 0.5

    # Slowloris: a byte of the head every 0.25 s never completes it within the deadline.
    with socket.create_connection(("127.0.0.1", limited.port)) as slow:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
        t0 = time.monotonic()
        slow.settimeout(0.25)
        cut = False
        for byte in head:
            try:
                slow.send(bytes([byte]))
                if slow.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            assert time.monotonic() - t0 < limit, "a head trickling in was never cut"
        assert cut
        assert IDLE_S - 0.5 <= time.monotonic() - t0 < limit

    # Keep-alive: one request answered, then the idle connection is closed.
    with socket.create_connection(("127.0.0.1", limited.port)) as keep:
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        keep.settimeout(5)
        first = keep.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        assert closed_within(keep, limit) >= IDLE_S - 0.5
    no_tracebacks(limited)


@pytest.mark.slow
def test_over_long_or_malformed_request_heads_get_clean_errors(limited):
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    big_header = start + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    status, body = status_and_json(raw_exchange(limited.port, big_header))
    assert (status, body.get("error", {}).get("code")) == (431, "request_header_fields_too_large")

    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    status, body = status_and_json(raw_exchange(limited.port, start + many + b"\r\n"))
    assert (status, body.get("error", {}).get("code")) == (431, "request_header_fields_too_large")

    long_line = b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    status, body = status_and_json(raw_exchange(limited.port, long_line))
    assert (status, body.get("error", {}).get("code")) == (414, "uri_too_long")

    status, body = status_and_json(raw_exchange(limited.port, b"HELLO THERE\r\n\r\n"))
    assert (status, body.get("error", {}).get("code")) == (400, "bad_request")

    # A body announced but never sent holds the connection for one idle timeout at most.
    t0 = time.monotonic()
    raw_exchange(
        limited.port,
        b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{",
    )
    assert time.monotonic() - t0 < IDLE_S + SLACK_S
    assert requests.get(limited.url + "/healthz", timeout=5).status_code == 200
    # Garbage from a client is not the node's error: nothing at ERROR, no traceback.
    no_tracebacks(limited)
    assert limited.log_lines("ERROR") == []


class FeedReader:
    """One SSE response read on a thread: whether it is still open, and what came."""

    def __init__(self, url: str) -> None:
        self.response = requests.get(url, stream=True, timeout=(5, 120))
        self.status = self.response.status_code
        self.body = b""
        self.ended = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = self.response.content
            self.ended.set()

    def _read(self) -> None:
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                self.body += chunk
        except Exception:  # reset, or closed by close() from the test's thread
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self.response.close()


@pytest.mark.slow
def test_a_quiet_event_feed_outlives_the_idle_timeout(limited):
    created = limited.call("POST", "/sessions", 201, json=LISTEN)
    feed = FeedReader(f"{limited.url}/sessions/{created['id']}/events?stats=false")
    try:
        assert feed.status == 200
        time.sleep(3 * IDLE_S)  # nothing is sent: no stats, no speech, no keepalive yet
        assert not feed.ended.is_set(), "the feed was cut while waiting for events"
        assert b'"state":"listening"' in feed.body
        limited.call("DELETE", f"/sessions/{created['id']}")
        assert feed.ended.wait(10), "the feed did not end with the call"
        assert b'"state":"ended"' in feed.body
    finally:
        feed.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory, model_dir) -> NodeProcess:
    """A node allowed only 16 HTTP connections (so 12 event feeds)."""
    node = NodeProcess(
        "S",
        tmp_path_factory.mktemp("small"),
        env={"IM_HTTP_IDLE_TIMEOUT_S": str(IDLE_S), "IM_HTTP_MAX_CONNECTIONS": "16"},
        model_dir=model_dir,
    )
    node.start()
    yield node
    node.stop()


@pytest.mark.slow
def test_connections_are_bounded_and_feeds_leave_room_for_short_requests(small):
    baseline = fd_count(small.pid)
    # Silent connections: the newest evict the oldest; descriptors stay bounded and a
    # request sent at once still gets in.
    socks = open_silent(small.port, 200)
    try:
        t0 = time.monotonic()
        assert requests.get(small.url + "/healthz", timeout=IDLE_S + 3).status_code == 200
        assert time.monotonic() - t0 < SLACK_S
        assert fd_count(small.pid) <= baseline + 16 + 16
    finally:
        for s in socks:
            s.close()

    created = small.call("POST", "/sessions", 201, json=LISTEN)
    # With stats (once a second) the server soon notices a feed whose client left.
    url = f"{small.url}/sessions/{created['id']}/events"
    feeds = [FeedReader(url) for _ in range(12)]
    busy: list[socket.socket] = []
    try:
        assert [f.status for f in feeds] == [200] * 12
        extra = FeedReader(url)
        assert extra.status == 503, extra.body
        assert json.loads(extra.body)["error"]["code"] == "too_many_feeds"
        assert requests.get(small.url + "/healthz", timeout=5).status_code == 200
        # The other 4 connections busy with requests whose bodies never come: now every
        # connection is serving a request, and a newcomer is told so at once.
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", small.port))
            s.sendall(
                b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: 100\r\n\r\n"
            )
            busy.append(s)
        time.sleep(0.3)
        status, body = status_and_json(raw_exchange(small.port, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert (status, body.get("error", {}).get("code")) == (503, "too_many_connections")
        # Those bodies time out; then there is room again.
        for s in busy:
            closed_within(s, IDLE_S + SLACK_S)
        assert requests.get(small.url + "/healthz", timeout=5).status_code == 200
        # A feed whose client leaves gives its slot back.
        feeds.pop().close()
        again = wait_until(
            lambda: (r := FeedReader(url)).status == 200 and r,
            5,
            "a closed feed to give its slot back",
            step=0.2,
        )
        feeds.append(again)
    finally:
        for f in feeds:
            f.close()
        for s in busy:
            s.close()
    small.call("DELETE", f"/sessions/{created['id']}")
    no_tracebacks(small)


@pytest.mark.slow
def test_a_foreign_host_is_refused_by_a_real_node(limited):
    before = len(limited.call("GET", "/sessions")["sessions"])
    r = requests.post(
        limited.url + "/sessions",
        json=LISTEN,
        headers={"Host": "rebound.attacker.example", "Origin": "http://rebound.attacker.example"},
        timeout=10,
    )
    assert r.status_code == 421, r.text
    assert r.json()["error"]["code"] == "misdirected_request"
    assert len(limited.call("GET", "/sessions")["sessions"]) == before


# --- Host and Origin, in process ------------------------------------------------------------


def make_client(node_factory: NodeFactory, name: str = "node", **env: str):
    """The API client of a new in-process node with ``env``."""
    return create_app(node_factory(name, **env)).test_client()


@pytest.fixture
def loopback(client):
    return client


def sessions(client) -> list[dict]:
    return client.get("/sessions").get_json()["sessions"]


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.nip.io:80",
        "evil.example@localhost",
        "",
        "[::1",
        "local host",
        "l\u00f6calhost",
        "localhost:99999",
    ],
)
def test_a_foreign_or_malformed_host_is_421_before_anything_runs(loopback, host):
    r = loopback.post("/sessions", json=LISTEN, headers={"Host": host})
    assert r.status_code == 421, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "misdirected_request"
    assert loopback.get("/healthz", headers={"Host": host}).status_code == 421
    assert loopback.get("/sessions", headers={"Host": host}).status_code == 421
    assert sessions(loopback) == []


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "LOCALHOST.",
        "127.0.0.1",
        "127.0.0.1:1234",
        "[::1]",
        "[::1]:8080",
        socket.gethostname(),
        f"{socket.gethostname()}:80",
    ],
)
def test_the_nodes_own_names_are_served(loopback, host):
    assert loopback.get("/healthz", headers={"Host": host}).status_code == 200
    r = loopback.post("/sessions", json=LISTEN, headers={"Host": host})
    assert r.status_code == 201, r.get_data(as_text=True)
    loopback.delete(f"/sessions/{r.get_json()['id']}", headers={"Host": host})


def test_allowed_hosts_add_names_and_star_turns_the_check_off(node_factory):
    client = make_client(node_factory, "a", IM_API_ALLOWED_HOSTS="api.example, Other.Example")
    assert client.get("/sessions", headers={"Host": "api.example:8080"}).status_code == 200
    assert client.get("/sessions", headers={"Host": "other.example"}).status_code == 200
    assert client.get("/sessions", headers={"Host": "localhost"}).status_code == 200
    assert client.get("/sessions", headers={"Host": "evil.example"}).status_code == 421
    client = make_client(node_factory, "b", IM_API_ALLOWED_HOSTS="*")
    assert client.get("/sessions", headers={"Host": "evil.example"}).status_code == 200


def test_a_wildcard_bind_serves_ip_literals_but_not_foreign_names(node_factory):
    client = make_client(node_factory, IM_API_HOST="0.0.0.0", IM_API_TOKEN="t" * 20)
    auth = {"Authorization": "Bearer " + "t" * 20}
    assert client.get("/sessions", headers={**auth, "Host": "192.0.2.7:8080"}).status_code == 200
    assert client.get("/sessions", headers={**auth, "Host": "[2001:db8::1]"}).status_code == 200
    # The Host check comes first: a foreign name is 421 with or without the token.
    assert client.get("/sessions", headers={"Host": "evil.example"}).status_code == 421
    assert client.get("/sessions", headers={**auth, "Host": "evil.example"}).status_code == 421


def test_a_specific_api_address_is_one_of_the_names(node_factory):
    client = make_client(node_factory, IM_API_HOST="127.0.0.5")
    assert client.get("/healthz", headers={"Host": "127.0.0.5:8080"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "192.0.2.7"}).status_code == 421


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:3000"},  # another origin on this very host
        {"Origin": "https://localhost:8443"},
        {"Origin": "null"},
        {"Origin": "http://localhost/path"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_origin_writes_are_403_and_change_nothing(loopback, headers):
    r = loopback.post("/sessions", json=LISTEN, headers=headers)
    assert r.status_code == 403, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "cross_origin"
    assert sessions(loopback) == []
    live = loopback.post("/sessions", json=LISTEN).get_json()
    assert loopback.delete(f"/sessions/{live['id']}", headers=headers).status_code == 403
    assert loopback.get(f"/sessions/{live['id']}").get_json()["state"] == "listening"
    # Reading is not a state change (and without CORS headers a page cannot read it).
    assert loopback.get("/sessions", headers=headers).status_code == 200
    loopback.delete(f"/sessions/{live['id']}")


@pytest.mark.parametrize(
    "host,headers",
    [
        ("localhost", {"Origin": "http://localhost"}),
        ("localhost:8080", {"Origin": "http://localhost:8080", "Sec-Fetch-Site": "same-origin"}),
        ("127.0.0.1:80", {"Origin": "http://127.0.0.1"}),
        ("[::1]:8080", {"Origin": "http://[::1]:8080"}),
        ("localhost", {"Sec-Fetch-Site": "none"}),  # typed in the address bar, a bookmark
    ],
)
def test_same_origin_writes_pass(loopback, host, headers):
    r = loopback.post("/sessions", json=LISTEN, headers={"Host": host, **headers})
    assert r.status_code == 201, r.get_data(as_text=True)
    loopback.delete(f"/sessions/{r.get_json()['id']}")


def test_the_document_declares_421_and_403(loopback):
    doc = loopback.get("/openapi.json").get_json()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "421" in operation["responses"], (method, path)
            if method in ("post", "delete"):
                assert "403" in operation["responses"], (method, path)
    assert "503" in doc["paths"]["/sessions/{call_id}/events"]["get"]["responses"]


def test_event_feeds_are_limited_and_give_their_slot_back(node_factory):
    client = make_client(node_factory, IM_HTTP_MAX_CONNECTIONS="16")
    call = client.post("/sessions", json=LISTEN).get_json()["id"]
    feeds = [client.get(f"/sessions/{call}/events") for _ in range(12)]
    assert [f.status_code for f in feeds] == [200] * 12
    refused = client.get(f"/sessions/{call}/events")
    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "too_many_feeds"
    assert refused.headers["Retry-After"]
    assert client.get("/healthz").status_code == 200  # short requests are not feeds
    feeds.pop().close()
    assert client.get(f"/sessions/{call}/events").status_code == 200
    for f in feeds:
        f.close()
    # An unknown call's feed (404) gives its slot back at once.
    for _ in range(20):
        assert client.get("/sessions/nope/events").status_code == 404
    assert client.get(f"/sessions/{call}/events").status_code == 200


def test_feed_limit_leaves_a_quarter_of_the_connections():
    from service.api.guard import feed_limit

    assert feed_limit(load_settings({"IM_HTTP_MAX_CONNECTIONS": "16"})) == 12
    assert feed_limit(load_settings({})) == 192


@pytest.mark.parametrize(
    "text,expected",
    [
        ("localhost", ("localhost", None)),
        ("Example.COM.:80", ("example.com", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("::1", None),
        ("[example.com]:80", None),
        ("host:", None),
        ("host:8o", None),
        ("host:\u0668\u0660", None),
        ("ho st", None),
        ("host\x00", None),
    ],
)
def test_parse_host(text, expected):
    from service.api.guard import parse_host

    assert parse_host(text) == expected
