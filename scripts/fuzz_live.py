"""Live wire fuzzing (``scripts/fuzz_wire --live``): authenticated hostile peers against a
running node, while a healthy call on the same node keeps talking.

Why live: the parser fuzz proves that every byte stream decodes or is refused, but not what
*accepted* hostile messages do to the node behind the parser (a playout loop walking 2**31
frames, a transcript flood committed in a loop that never yields). Those show only as a
node that stops answering, so this mode measures exactly that.

Setup: two real node processes (service/localnodes.py): the target, and a healthy peer
that dials it and plays real speech (scripts/data/en_jfk_inaugural_1961.wav, repeated) with
transcription on, so the target receives audio and transcript segments all along. A probe
process GETs the target's /healthz every --probe-interval-ms on a fresh connection and logs
each latency (a process of its own, so the attacker's threads cannot delay the probe).

Each attack gets a fresh listening call on the target (input silence, output null, no
transcription), dialled by a peer written from the protocol's own modules (framing from
service/transport/protocol.py, HMAC proofs from handshake.py: it authenticates like any
caller), for --seconds. Then --settle seconds idle, a wait of at most --recover-s for
/healthz to answer, the hostile call's state, and for transcript attacks its text, SRT and
WebVTT exports. A node that died or did not recover is killed and restarted (with a new
healthy call) before the next attack, so one freeze does not hide the rest.

Exit status 1 if any /healthz latency reached --max-latency-ms (100), the node died or hung,
the healthy call stopped flowing, or an attack could not run. A baseline window without any
attack counts too: a machine too busy to judge does not pass. Loopback only; every socket
and HTTP call has a timeout and the whole run a --deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.audio.wavfile import read_wav  # noqa: E402
from service.localnodes import NodeError, NodeProcess  # noqa: E402
from service.transport import handshake  # noqa: E402
from service.transport import protocol as p  # noqa: E402

CLIP = ROOT / "scripts" / "data" / "en_jfk_inaugural_1961.wav"
FRAME_S = 0.020  # one audio frame on the wire
FRAMES_PER_S = 1 / FRAME_S
FLOWING_FRACTION = 0.8  # the healthy call must move at least this share of 50 frames/s
SEND_STALL_S = 2.0  # a send that cannot finish this long: the node stopped reading us
FLOOD_BATCH = 64 * 1024  # bytes per sendall in a flood
MONITOR_EVERY_S = 0.25
HTTP_TIMEOUT_S = 5.0
SEGMENT_LAG_S = 1.5  # a segment the healthy peer stored must be on the target by then
MASK32 = 0xFFFFFFFF
SILENCE = bytes(p.PCM16_FRAME_BYTES)
HOSTILE_CALL = {"mode": "listen", "port": 0, "input": "silence", "output": None}

# The probe: its own interpreter, stdlib only, one line per request: start (monotonic,
# the same clock in every process on Linux), seconds taken, HTTP status or error name.
# It stops at the deadline or when its parent is gone.
PROBE = r"""
import http.client, os, sys, time
host, port = sys.argv[1], int(sys.argv[2])
interval, timeout, until, parent = map(float, sys.argv[3:7])
while time.monotonic() < until and os.getppid() == int(parent):
    t = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        reply.read()
        status = str(reply.status)
    except Exception as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    took = time.monotonic() - t
    sys.stdout.write(f"{t:.6f} {took:.6f} {status}\n")
    sys.stdout.flush()
    time.sleep(max(0.0, interval - took))
"""


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The live mode's options (fuzz_wire's parser holds them, so --help shows both modes)."""
    names = ", ".join(a.name for a in ATTACKS)
    group.add_argument(
        "--attacks", default="all", help=f"comma-separated attacks, or all (default): {names}"
    )
    group.add_argument(
        "--seconds", type=float, default=3.0, help="length of each attack (default 3)"
    )
    group.add_argument("--settle", type=float, default=1.5, help="idle seconds after each (1.5)")
    group.add_argument(
        "--recover-s",
        type=float,
        default=10.0,
        help="longest wait for /healthz after an attack (10)",
    )
    group.add_argument(
        "--deadline", type=float, default=900.0, help="bound on the whole run, s (900)"
    )
    group.add_argument(
        "--max-latency-ms", type=float, default=100.0, help="worst /healthz latency allowed (100)"
    )
    group.add_argument("--probe-interval-ms", type=float, default=20.0, help="(20)")
    group.add_argument("--probe-timeout-s", type=float, default=2.0, help="(2)")
    group.add_argument("--report", type=Path, help="also write the results here as JSON")
    group.add_argument("--keep-data", action="store_true", help="keep the nodes' data and logs")


# -- HTTP, always with a timeout --------------------------------------------------------


def api(node: NodeProcess, method: str, path: str, expect: int | None = 200, **kw: Any) -> Any:
    """One API call on a fresh connection (thread-safe), bounded by a timeout; NodeError
    when the status is not `expect`."""
    kw.setdefault("timeout", HTTP_TIMEOUT_S)
    r = requests.request(method, node.url + path, **kw)
    if expect is not None and r.status_code != expect:
        raise NodeError(f"{node.name}: {method} {path} -> {r.status_code} {r.text[:300]}")
    if r.headers.get("content-type", "").startswith("application/json"):
        return r.json()
    return r


# -- the hostile peer -------------------------------------------------------------------


class HandshakeError(RuntimeError):
    pass


class HostilePeer:
    """A dialer written from the protocol modules: TCP, hellos, HMAC proofs (the dialer's
    side of CallSession._dialer_handshake), then whatever the attack sends. A reader thread
    drains what the node sends, so the node's own sends never stall on us, and notes its
    bye; every send is bounded by SEND_STALL_S."""

    def __init__(self, address: str, token: str, timeout: float = 5.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = p.Decoder()
        self.received: Counter[str] = Counter()
        self.node_bye: str | None = None
        self.node_error: str | None = None  # what the node sent that we could not parse
        self.send_error: str | None = None
        self.eof = threading.Event()
        self._early: list[p.Message] = []
        try:
            self._handshake(token, time.monotonic() + timeout)
        except BaseException:
            self.sock.close()
            raise
        for message in self._early:
            self._count(message)
        self.sock.settimeout(SEND_STALL_S)
        self._reader = threading.Thread(target=self._read, name="hostile-reader", daemon=True)
        self._reader.start()

    def _next(self, deadline: float) -> p.Message:
        while not self._early:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HandshakeError("no answer from the node within the handshake timeout")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise HandshakeError("node closed the connection during the handshake")
            self._early.extend(self.decoder.feed(data))
        return self._early.pop(0)

    def _handshake(self, token: str, deadline: float) -> None:
        mine = p.Hello(
            transcribes=True, codecs=("pcm16",), node="fuzz-live", nonce=handshake.new_nonce()
        )
        self.sock.sendall(p.encode(mine))
        reply = self._next(deadline)
        if isinstance(reply, p.Bye):
            raise HandshakeError(f"node refused the hello: {reply.reason}")
        if not isinstance(reply, p.Hello) or reply.version != p.PROTOCOL_VERSION:
            raise HandshakeError(f"node answered the hello with {type(reply).__name__}")
        transcript = handshake.transcript_hash(mine, reply)
        self.sock.sendall(p.encode(p.Auth(handshake.proof(token, handshake.DIALER, transcript))))
        answer = self._next(deadline)
        if isinstance(answer, p.Bye):
            raise HandshakeError(f"node refused the proof: {answer.reason}")
        if not isinstance(answer, p.Auth) or not handshake.verify(
            token, handshake.LISTENER, transcript, answer.proof
        ):
            raise HandshakeError("node could not prove the call token")

    def _count(self, message: p.Message) -> None:
        self.received[type(message).__name__] += 1
        if isinstance(message, p.Bye):
            self.node_bye = message.reason

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                messages = self.decoder.feed(data)
            except p.ProtocolError as exc:
                self.node_error = str(exc)
                break
            for message in messages:
                self._count(message)
        self.eof.set()

    @property
    def alive(self) -> bool:
        return self.send_error is None and not self.eof.is_set()

    def send(self, data: bytes) -> bool:
        """False (and why, in send_error) once the node stops taking what we send."""
        if self.send_error is not None:
            return False
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.send_error = f"node stopped reading (a send blocked {SEND_STALL_S:g} s)"
        except OSError as exc:
            self.send_error = f"node closed the connection ({exc.strerror or exc})"
        return self.send_error is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=3)


# -- what the attacks send ----------------------------------------------------------------


def now_us() -> int:
    return int(time.time() * 1e6)


def frame(seq: int, capture_us: int | None = None) -> bytes:
    """One PCM16 silence frame, any sequence number and capture time the header can hold."""
    t = now_us() if capture_us is None else capture_us
    return p.encode(p.Audio(seq=seq & MASK32, capture_time_us=t, payload=SILENCE))


def segment(no: int, start: float, end: float, text: str = "fuzz") -> bytes:
    """A transcript message; encode() validates nothing, so refused values go out too."""
    return p.encode(p.Transcript(no=no, start=start, end=end, text=text, language="en"))


def paced(peer: HostilePeer, stop_at: float, ticks: Iterator[bytes]) -> int:
    """Send one item of `ticks` every 20 ms, like a real peer's audio (no catch-up bursts)."""
    sent = 0
    due = time.monotonic()
    for data in ticks:
        if time.monotonic() >= stop_at or not peer.send(data):
            break
        sent += 1
        due += FRAME_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, max(0.0, stop_at - time.monotonic())))
        else:
            due = time.monotonic()
    return sent


def flood(peer: HostilePeer, stop_at: float, make: Callable[[int], bytes]) -> int:
    """Send `make(i)` for i = 0, 1, ... in batches of ~64 KiB as fast as the socket takes
    them, until `stop_at` or the node stops taking them; returns the messages sent."""
    sent = 0
    counter = itertools.count()
    while time.monotonic() < stop_at and peer.alive:
        batch = bytearray()
        n = 0
        while len(batch) < FLOOD_BATCH:
            batch += make(next(counter))
            n += 1
        if not peer.send(bytes(batch)):
            break
        sent += n
    return sent


def with_audio(items: list[bytes], start_seq: int = 0) -> Iterator[bytes]:
    """Paced ticks: each carries an audio frame (so the call looks alive) plus the next
    item, until the items run out; then audio alone."""
    for i in itertools.count(start_seq):
        yield frame(i) + (items[i - start_seq] if i - start_seq < len(items) else b"")


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    run: Callable[[HostilePeer, float, random.Random], int]  # returns messages sent
    exports: bool = False  # check the call's text/SRT/WebVTT renderings afterwards


def seq_pair(first: int) -> Callable[[HostilePeer, float, random.Random], int]:
    def run(peer: HostilePeer, stop_at: float, rng: random.Random) -> int:
        if not peer.send(frame(first) + frame(0)):  # one write, before the first tick
            return 0
        return 2 + paced(peer, stop_at, (frame(s) for s in itertools.count(1)))

    return run


def seq_ticks(seqs: Iterator[int], per_tick: int = 1) -> Iterator[bytes]:
    return (frame(s) * per_tick for s in seqs)


CAPTURE_TIMES = (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 2**20, -1, 10**9, 10**18, "ns")


def capture_times(rng: random.Random) -> Iterator[bytes]:
    for seq in itertools.count():
        t = CAPTURE_TIMES[seq % len(CAPTURE_TIMES)]
        if t == "ns":
            t = time.time_ns()  # nanoseconds where microseconds belong
        elif t == -1:
            t = now_us() - 3600 * 10**6 * rng.randint(1, 10**5)  # hours to decades ago
        yield frame(seq, t % 2**64)


EXTREME_TIMES = [
    (0, 1e306, 1e306),
    (1, 0.0, 1e306),
    (2, 1.7e308, 1.7e308),
    (3, 0.0, 0.0),
    (4, 5e-324, 5e-324),
    (5, 2.0**53, 2.0**53 + 2),
    (6, 1e15, 1e15 + 1),
    (2**31 - 1, 1.0, 2.0),  # the largest number the parser takes
    (0, 1.0, 2.0),  # the same number again
    (7, 10**300, 10**300),  # a JSON integer, not a float
]

HOSTILE_TEXTS = [
    "line one\nLocal: a forged local line",
    "cr\rcrlf\r\nlf\nend",
    "\n\n99\n00:00:00,000 --> 00:00:09,000\nRemote: a forged SRT cue\n\n",
    "x\n\nWEBVTT\n\nNOTE forged\n\n00:00.000 --> 00:09.000\na forged WebVTT cue",
    "\x00\x01\x07\x08\x0b\x0c\x1b[2J\x1b[31mANSI red\x1b[0m\x7f\x9b31m",
    "\u202eoverride\u2028line separator\u2029paragraph separator\x85next line",
    "<b>&amp; --> <v Local>",
    "",
    " " * 200,
    "w" * p.MAX_TEXT,
]

LONG_REASON = ("hangup\n2024-01-01 00:00:00,000 ERROR service: forged \x1b[31m" + "x" * 200)[
    : p.MAX_REASON
]


def mixed(rng: random.Random) -> Callable[[int], bytes]:
    kinds = [
        lambda i: frame(rng.getrandbits(32)),
        lambda i: segment(i % 2**31, float(i), float(i) + 1.0, "mixed"),
        lambda i: p.encode(p.Ping(id=i & MASK32, sent_us=rng.getrandbits(64))),
        lambda i: p.encode(p.Pong(id=rng.getrandbits(32), sent_us=rng.getrandbits(64))),
        lambda i: HELLO_MID_CALL,
        lambda i: p.encode(p.Auth(proof=f"{rng.getrandbits(256):064x}")),
    ]
    return lambda i: rng.choice(kinds)(i)


HELLO_MID_CALL = p.encode(
    p.Hello(transcribes=True, codecs=("pcm16",) * 8, node="h" * 256, nonce="0" * p.NONCE_HEX)
)
FLOOD_TEXT = "flood " * 40


ATTACKS: list[Attack] = [
    Attack("seq-2^31-then-0", "audio seq 2**31 then 0 in one write", seq_pair(2**31)),
    Attack("seq-2^28-then-0", "audio seq 2**28 then 0 in one write", seq_pair(2**28)),
    Attack("seq-max-then-0", "audio seq 2**32-1 then 0 in one write", seq_pair(MASK32)),
    Attack(
        "seq-wrap",
        "paced audio counting through the 32-bit wrap",
        lambda peer, stop, rng: paced(peer, stop, seq_ticks(itertools.count(2**32 - 25))),
    ),
    Attack(
        "seq-reversed",
        "paced audio counting down",
        lambda peer, stop, rng: paced(peer, stop, seq_ticks(itertools.count(2**20, -1))),
    ),
    Attack(
        "seq-duplicates",
        "every frame four times",
        lambda peer, stop, rng: 4 * paced(peer, stop, seq_ticks(itertools.count(), per_tick=4)),
    ),
    Attack(
        "seq-jumps",
        "paced audio, a random 32-bit seq each frame",
        lambda peer, stop, rng: paced(
            peer, stop, seq_ticks(rng.getrandbits(32) for _ in itertools.count())
        ),
    ),
    Attack(
        "capture-time-extremes",
        "capture_time_us 0, 1, 2**63, 2**64-1, ns for µs, decades ago",
        lambda peer, stop, rng: paced(peer, stop, capture_times(rng)),
    ),
    Attack(
        "transcript-times",
        "segments at 1e306, 1.7e308, 5e-324, 2**53, no 2**31-1, repeated numbers",
        lambda peer, stop, rng: paced(
            peer, stop, with_audio([segment(no, s, e) for no, s, e in EXTREME_TIMES])
        ),
        exports=True,
    ),
    Attack(
        "transcript-negative",
        "a segment with start -1 (the parser must refuse it)",
        lambda peer, stop, rng: paced(peer, stop, with_audio([segment(0, -1.0, 1.0)])),
    ),
    Attack(
        "transcript-reversed",
        "a segment with start > end (refused)",
        lambda peer, stop, rng: paced(peer, stop, with_audio([segment(0, 5.0, 1.0)])),
    ),
    Attack(
        "transcript-huge-no",
        "a segment numbered 2**40 (refused)",
        lambda peer, stop, rng: paced(peer, stop, with_audio([segment(2**40, 0.0, 1.0)])),
    ),
    Attack(
        "transcript-text",
        "texts with newlines, forged lines and cues, control characters, ANSI, 4000 chars",
        lambda peer, stop, rng: paced(
            peer,
            stop,
            with_audio([segment(i, i, i + 0.5, t) for i, t in enumerate(HOSTILE_TEXTS)]),
        ),
        exports=True,
    ),
    Attack(
        "flood-audio",
        "audio frames as fast as the socket takes them",
        lambda peer, stop, rng: flood(peer, stop, frame),
    ),
    Attack(
        "flood-transcript",
        "transcript segments as fast as the socket takes them",
        lambda peer, stop, rng: flood(
            peer, stop, lambda i: segment(i % 2**31, i * 0.01, i * 0.01 + 0.01, FLOOD_TEXT)
        ),
    ),
    Attack(
        "flood-ping",
        "pings (each asks for a pong)",
        lambda peer, stop, rng: flood(
            peer, stop, lambda i: p.encode(p.Ping(id=i & MASK32, sent_us=now_us()))
        ),
    ),
    Attack(
        "flood-pong",
        "pongs for pings never sent",
        lambda peer, stop, rng: flood(
            peer, stop, lambda i: p.encode(p.Pong(id=i & MASK32, sent_us=2**64 - 1))
        ),
    ),
    Attack(
        "flood-hello",
        "hellos mid-call",
        lambda peer, stop, rng: flood(peer, stop, lambda i: HELLO_MID_CALL),
    ),
    Attack(
        "flood-auth",
        "auth messages mid-call",
        lambda peer, stop, rng: flood(peer, stop, lambda i: p.encode(p.Auth("f" * p.PROOF_HEX))),
    ),
    Attack(
        "flood-bye",
        f"byes with {p.MAX_REASON}-character reasons holding a forged log line",
        lambda peer, stop, rng: flood(peer, stop, lambda i: p.encode(p.Bye(LONG_REASON))),
    ),
    Attack(
        "flood-mixed",
        "every message type at random",
        lambda peer, stop, rng: flood(peer, stop, mixed(rng)),
    ),
]


# -- measuring ------------------------------------------------------------------------------


class Probe:
    """The /healthz probe process of the target's current incarnation, and every answer
    it has logged (kept across restarts: windows are picked by time)."""

    def __init__(self, interval_s: float, timeout_s: float, until: float) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.until = until
        self.samples: list[tuple[float, float, str]] = []  # start, seconds, status
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def start(self, port: int) -> None:
        self.stop()
        args = [port, self.interval_s, self.timeout_s, self.until, os.getpid()]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, "127.0.0.1", *map(str, args)],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()

    def _collect(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            t, took, status = line.split()
            with self.lock:
                self.samples.append((float(t), float(took), status))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def window(self, a: float, b: float) -> list[tuple[float, float, str]]:
        with self.lock:
            return [s for s in self.samples if a <= s[0] <= b]

    def answered_since(self, t: float) -> bool:
        with self.lock:
            return any(s[0] >= t and s[2] == "200" for s in reversed(self.samples[-200:]))


@dataclass
class CallSample:
    t: float
    call: str
    state: str | None
    frames: int | None
    segments: int | None


class Monitor:
    """Polls the healthy call on both nodes (GET /sessions/ID, bounded): its state, frames
    received and segments stored, to tell whether audio and transcript keep flowing."""

    def __init__(self) -> None:
        self.samples: dict[str, list[CallSample]] = {"target": [], "healthy": []}
        self.lock = threading.Lock()
        self.targets: dict[str, tuple[NodeProcess, str, str]] = {}  # side -> node, id, speaker
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="monitor", daemon=True).start()

    def watch(self, side: str, node: NodeProcess, call_id: str, speaker: str) -> None:
        with self.lock:
            self.targets[side] = (node, call_id, speaker)

    def _run(self) -> None:
        while not self.stopped.wait(MONITOR_EVERY_S):
            with self.lock:
                targets = dict(self.targets)
            for side, (node, call_id, speaker) in targets.items():
                try:
                    s = api(node, "GET", f"/sessions/{call_id}", timeout=1.0)
                    sample = CallSample(
                        time.monotonic(),
                        call_id,
                        s["state"],
                        s["stats"]["frames_received"],
                        s["stats"]["segments"][speaker],
                    )
                except (requests.RequestException, NodeError, KeyError, TypeError, ValueError):
                    sample = CallSample(time.monotonic(), call_id, None, None, None)
                with self.lock:
                    self.samples[side].append(sample)

    def series(self, side: str, call_id: str) -> list[CallSample]:
        with self.lock:
            return [s for s in self.samples[side] if s.call == call_id and s.state is not None]


def latency_figures(samples: list[tuple[float, float, str]], a: float, b: float) -> dict:
    """Worst and p99 latency, failed probes and the longest stretch without an answer."""
    if not samples:
        return {"probes": 0, "worst_ms": math.inf, "p99_ms": math.inf, "failed": 0, "gap_ms": 0}
    took = sorted(s[1] for s in samples)
    answered = sorted(s[0] + s[1] for s in samples if s[2] == "200")
    edges = [a, *answered, b]
    return {
        "probes": len(samples),
        "worst_ms": round(took[-1] * 1e3, 1),
        "p99_ms": round(took[max(0, math.ceil(0.99 * len(took)) - 1)] * 1e3, 1),
        "failed": sum(s[2] != "200" for s in samples),
        "failures": dict(Counter(s[2] for s in samples if s[2] != "200")),
        "gap_ms": round(max(y - x for x, y in itertools.pairwise(edges)) * 1e3),
    }


def value_at(series: list[CallSample], t: float, attr: str) -> int | None:
    before = [getattr(s, attr) for s in series if s.t <= t]
    return before[-1] if before else None


def rate(series: list[CallSample], a: float, b: float) -> float | None:
    """Frames per second over the samples in [a, b]; None when they cover under half."""
    pts = [s for s in series if a <= s.t <= b and s.frames is not None]
    if len(pts) < 2 or pts[-1].t - pts[0].t < 0.5 * (b - a):
        return None
    return (pts[-1].frames - pts[0].frames) / (pts[-1].t - pts[0].t)


# -- the run --------------------------------------------------------------------------------


def speech_input(path: Path, seconds: float) -> Path:
    """The healthy peer's microphone: the JFK clip again and again, 1 s pauses between."""
    clip = read_wav(CLIP)
    pause = np.zeros(16000, dtype=np.int16)
    reps = max(1, math.ceil(seconds / ((clip.size + pause.size) / 16000)))
    pcm = np.concatenate([clip, pause] * reps)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@dataclass
class Result:
    attack: str
    what: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    latency: dict = field(default_factory=dict)
    node: str = "survived"
    hostile: str = ""
    sent: int = 0
    received: dict = field(default_factory=dict)
    healthy: dict = field(default_factory=dict)
    exports: dict = field(default_factory=dict)
    log_lines: int = 0
    db_growth_mb: float = 0.0
    log_tail: str = ""


class LiveFuzz:
    def __init__(self, args: argparse.Namespace, work: Path, attacks: list[Attack]) -> None:
        self.args = args
        self.work = work
        self.attacks = attacks
        self.until = time.monotonic() + args.deadline
        models = (ROOT / "data" / "models").resolve()
        # No post-call pass: each ended hostile call would queue one, whose decoding then
        # shares the target's CPU and GIL with the hub; this measures what peers can do.
        # (With passes on, 2026-12-01, quiet machine: every attack ok, worst 94.8 ms, in
        # flood-transcript; the pass's model now loads at start, which had held /healthz
        # up ~0.5 s at the first pass.)
        no_pass = {"IM_POSTCALL": "0"}
        self.target = NodeProcess("target", work / "target", env=no_pass, model_dir=models)
        # Short utterances, no partials: a segment every few seconds, for little CPU.
        quick = {"IM_PARTIAL_INTERVAL_S": "0", "IM_MAX_UTTERANCE_S": "2.5"}
        self.peer = NodeProcess("healthy", work / "healthy", env=quick, model_dir=models)
        self.probe = Probe(args.probe_interval_ms / 1e3, args.probe_timeout_s, self.until + 5)
        self.monitor = Monitor()
        self.healthy: tuple[str, str] | None = None  # (call id on target, call id on peer)
        self.speech = ""

    def left(self) -> float:
        return self.until - time.monotonic()

    # -- nodes and the healthy call -------------------------------------------------------

    def setup(self) -> None:
        self.target.start(timeout=min(180.0, self.left()))
        self.probe.start(self.target.port)
        self.peer.start(timeout=min(180.0, self.left()))
        wav = speech_input(self.work / "speech.wav", self.args.deadline + 60)
        media = getattr(self.peer, "media", None)  # nodes that confine file: to IM_MEDIA_DIR
        self.speech = media(wav) if media else f"file:{wav}"
        self.connect_healthy()

    def connect_healthy(self) -> None:
        """A listening call on the target, dialled by the healthy peer; back once the
        first segment of its speech has reached the target (so every window can see
        transcript flowing)."""
        listen = api(
            self.target,
            "POST",
            "/sessions",
            201,
            json={**HOSTILE_CALL, "transcribe": False},
        )
        dial = api(
            self.peer,
            "POST",
            "/sessions",
            201,
            json={
                "mode": "dial",
                "peer": listen["address"],
                "token": listen["token"],
                "input": self.speech,
                "output": None,
                "transcribe": True,
            },
        )
        self.healthy = (listen["id"], dial["id"])
        self.monitor.watch("target", self.target, listen["id"], "remote")
        self.monitor.watch("healthy", self.peer, dial["id"], "local")
        deadline = time.monotonic() + min(60.0, self.left())
        got: list[CallSample] = []
        while time.monotonic() < deadline:
            got = self.monitor.series("target", listen["id"])
            if got and got[-1].state in ("ended", "failed"):
                break
            if got and (got[-1].segments or 0) > 0:
                return
            time.sleep(0.2)
        raise NodeError(f"healthy call carried no transcript within 60 s: {got[-1:]}")

    def target_alive(self) -> bool:
        return self.target.proc is not None and self.target.proc.poll() is None

    def restart_target(self) -> None:
        self.target.kill()
        self.target.restart(timeout=min(180.0, max(1.0, self.left())))
        self.probe.start(self.target.port)
        self.connect_healthy()

    def ensure_healthy(self) -> None:
        """The healthy call connected on both sides, re-dialled if an attack ended it."""
        assert self.healthy is not None
        try:
            a = api(self.target, "GET", f"/sessions/{self.healthy[0]}")
            b = api(self.peer, "GET", f"/sessions/{self.healthy[1]}")
        except (requests.RequestException, NodeError):
            a = b = {"state": "unknown"}
        if a["state"] != "connected" or b["state"] != "connected":
            with contextlib.suppress(requests.RequestException, NodeError):
                api(self.peer, "DELETE", f"/sessions/{self.healthy[1]}", expect=None)
            with contextlib.suppress(requests.RequestException, NodeError):
                api(self.target, "DELETE", f"/sessions/{self.healthy[0]}", expect=None)
            self.connect_healthy()

    # -- one window -----------------------------------------------------------------------

    def measure(self, attack: Attack | None) -> Result:
        """Run one attack (None: the baseline, nothing hostile) and judge its window."""
        args = self.args
        name, what = (attack.name, attack.what) if attack else ("(baseline)", "no attack")
        res = Result(name, what)
        log_mark = self._size(self.target.log_path)
        db_mark = self._db_size()
        t_begin = time.monotonic()
        peer: HostilePeer | None = None
        call_id = None
        try:
            if attack is not None:
                listen = api(self.target, "POST", "/sessions", 201, json=HOSTILE_CALL)
                call_id = listen["id"]
                peer = HostilePeer(listen["address"], listen["token"])
            t0 = time.monotonic()
            stop_at = t0 + min(args.seconds, max(0.0, self.left()))
            if attack is not None and peer is not None:
                rng = random.Random(f"{args.seed}:{attack.name}")
                res.sent = attack.run(peer, stop_at, rng)
            else:
                time.sleep(max(0.0, stop_at - time.monotonic()))
        except (requests.RequestException, NodeError, HandshakeError, OSError) as exc:
            res.problems.append(f"could not attack: {exc}")
            t0 = time.monotonic()
        t1 = time.monotonic()
        time.sleep(max(0.0, min(args.settle, self.left())))
        t_settled = time.monotonic()
        recovered = self._await_recovery(t1)
        if peer is not None:
            res.received = dict(peer.received)
            why = peer.send_error or peer.node_error
            if call_id is not None and recovered:
                res.hostile = self._hostile_state(call_id, peer, res)
            else:
                res.hostile = "unknown (node not answering)"
            if why:
                res.hostile += f"; {why}"
            peer.close()
        t_end = time.monotonic()
        res.latency = latency_figures(self.probe.window(t_begin, t_end), t_begin, t_end)
        res.log_lines = self._count_lines(self.target.log_path, log_mark)
        res.db_growth_mb = round((self._db_size() - db_mark) / 1e6, 1)
        res.healthy = self._healthy_flow(t0, t_settled, t_end)
        self._judge(res, recovered, t1)
        return res

    def _await_recovery(self, since: float) -> bool:
        """True once a probe started after `since` got a 200 (bounded by --recover-s)."""
        deadline = time.monotonic() + min(self.args.recover_s, max(0.0, self.left()))
        while time.monotonic() < deadline and self.target_alive():
            if self.probe.answered_since(since):
                return True
            time.sleep(0.05)
        return self.target_alive() and self.probe.answered_since(since)

    def _hostile_state(self, call_id: str, peer: HostilePeer, res: Result) -> str:
        try:
            s = api(self.target, "GET", f"/sessions/{call_id}")
        except (requests.RequestException, NodeError) as exc:
            return f"unknown ({exc})"
        if attack_exports(res.attack):
            res.exports = self._exports(call_id)
        if s["state"] in ("ended", "failed"):
            said = f", its bye: {peer.node_bye!r}" if peer.node_bye else ""
            return f"{s['state']}: {s['end_reason']!r}{said}"
        with contextlib.suppress(requests.RequestException, NodeError):
            api(self.target, "DELETE", f"/sessions/{call_id}", expect=None)
        return f"still {s['state']} (hung up by the fuzzer)"

    def _exports(self, call_id: str) -> dict:
        """Status of each rendering, and what hostile text did to it."""
        out: dict[str, Any] = {}
        for fmt in ("json", "text", "srt", "vtt"):
            try:
                r = requests.get(
                    f"{self.target.url}/sessions/{call_id}/transcript",
                    params={"format": fmt},
                    timeout=HTTP_TIMEOUT_S,
                )
            except requests.RequestException as exc:
                out[fmt] = type(exc).__name__
                continue
            out[fmt] = r.status_code
            if r.status_code != 200 or fmt == "json":
                if fmt == "json" and r.status_code == 200:
                    out["stored"] = len(r.json().get("segments", []))
                continue
            notes = export_problems(fmt, r.text, out.get("stored"))
            if notes:
                out[f"{fmt}_problems"] = notes
        return out

    def _healthy_flow(self, t0: float, t_settled: float, t_end: float) -> dict:
        """Did the healthy call keep moving audio both ways and transcript to the target?"""
        if self.healthy is None:
            return {"flowing": False, "why": "no healthy call"}
        on_target = self.monitor.series("target", self.healthy[0])
        on_peer = self.monitor.series("healthy", self.healthy[1])
        rx_target = rate(on_target, t0, t_settled)
        rx_peer = rate(on_peer, t0, t_settled)
        said0 = value_at(on_peer, t0, "segments") or 0
        said_late = value_at(on_peer, t_end - SEGMENT_LAG_S, "segments") or 0
        said_end = value_at(on_peer, t_end, "segments") or 0
        got0 = value_at(on_target, t0, "segments") or 0
        got_end = value_at(on_target, t_end, "segments")
        state = value_at(on_target, t_end, "state")
        why = []
        need = FLOWING_FRACTION * FRAMES_PER_S
        if rx_target is None or rx_target < need:
            why.append("target stopped receiving its audio")
        if rx_peer is None or rx_peer < need:
            why.append("target stopped sending its audio")
        if got_end is None or got_end < said_late:
            why.append("segments stopped reaching the target")
        if state != "connected":
            why.append(f"call {state or 'unknown'} on the target")
        return {
            "flowing": not why,
            "why": "; ".join(why),
            "target_rx_fps": None if rx_target is None else round(rx_target, 1),
            "target_tx_fps": None if rx_peer is None else round(rx_peer, 1),
            "segments_said": said_end - said0,
            "segments_arrived": None if got_end is None else got_end - got0,
        }

    def _judge(self, res: Result, recovered: bool, t1: float) -> None:
        limit = self.args.max_latency_ms
        if not self.target_alive():
            code = self.target.proc.returncode if self.target.proc else None
            res.node = f"DIED (exit {code})"
            res.log_tail = self.target.log_tail(8)
        elif not recovered:
            res.node = f"HUNG (no /healthz answer {self.args.recover_s:g} s after the attack)"
        if res.node != "survived":
            res.problems.append(f"node {res.node}")
        if res.latency["worst_ms"] >= limit:
            res.problems.append(f"/healthz took {res.latency['worst_ms']:g} ms (limit {limit:g})")
        if not res.healthy.get("flowing"):
            res.problems.append(f"healthy call: {res.healthy.get('why')}")
        res.ok = not res.problems

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def _db_size(self) -> int:
        return sum(self._size(f) for f in self.target.data_dir.glob("*.db*"))

    @staticmethod
    def _count_lines(path: Path, offset: int) -> int:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            return 0

    # -- all of it ------------------------------------------------------------------------

    def run(self) -> list[Result]:
        results: list[Result] = []
        self.setup()
        windows: list[Attack | None] = [None, *self.attacks]
        for attack in windows:
            need = self.args.seconds + self.args.settle + 2
            name = attack.name if attack else "(baseline)"
            if self.left() < need:
                res = Result(name, attack.what if attack else "no attack")
                res.problems.append("not run: --deadline reached")
                res.node = "-"
                results.append(res)
                print_result(res, self.args.max_latency_ms)
                continue
            try:
                if self.peer.proc is not None and self.peer.proc.poll() is not None:
                    self.peer.restart(timeout=min(180.0, max(1.0, self.left())))
                    self.target.kill()  # and a fresh healthy call with it
                if not self.target_alive():
                    self.restart_target()
                else:
                    self.ensure_healthy()
            except (requests.RequestException, NodeError) as exc:
                res = Result(name, attack.what if attack else "no attack", node="-")
                res.problems.append(f"not run: nodes or healthy call could not be set up: {exc}")
                results.append(res)
                print_result(res, self.args.max_latency_ms)
                self.target.kill()  # try afresh for the next one
                continue
            res = self.measure(attack)
            results.append(res)
            print_result(res, self.args.max_latency_ms)
            if res.node != "survived":
                self.target.kill()  # restarted (with a new healthy call) before the next one
        return results

    def close(self) -> None:
        self.monitor.stopped.set()
        self.probe.stop()
        for node in (self.target, self.peer):
            if node.proc is not None and node.proc.poll() is None:
                node.stop(timeout=10)


TEXT_LINE = re.compile(r"\[\d+:\d\d:\d\d\.\d{3}\] (Local|Remote): ")
CUE_TIMING = re.compile(r"\d+:\d\d:\d\d[,.]\d{3} --> ")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def export_problems(fmt: str, body: str, stored: int | None) -> list[str]:
    """What hostile segment text did to a rendering: lines or cues it forged, blocks it
    started, control characters it let through."""
    lines = body.split("\n")
    notes = []
    if fmt == "text":
        stray = [line for line in lines if line and not TEXT_LINE.match(line)]
        if stray:
            notes.append(f"{len(stray)} lines that are not a segment")
    else:
        cues = sum(bool(CUE_TIMING.match(line)) for line in lines)
        if stored is not None and cues != stored:
            notes.append(f"{cues} cues for {stored} segments")
        if fmt == "vtt" and any(line.startswith(("NOTE", "WEBVTT")) for line in lines[1:]):
            notes.append("a forged WebVTT block")
    if CONTROL.search(body.replace("\r\n", "\n")):
        notes.append("control characters")
    return notes


def attack_exports(name: str) -> bool:
    return any(a.exports for a in ATTACKS if a.name == name)


def print_result(res: Result, limit: float) -> None:
    lat = res.latency
    h = res.healthy
    verdict = "ok" if res.ok else "FAIL"
    if lat:
        print(
            f"{res.attack:<24} {verdict:<4} /healthz worst {lat['worst_ms']:>7g} ms, "
            f"p99 {lat['p99_ms']:>7g} ms, {lat['failed']}/{lat['probes']} failed, "
            f"longest without answer {lat['gap_ms']} ms"
        )
    else:
        print(f"{res.attack:<24} {verdict:<4}")
    print(f"    node {res.node}; sent {res.sent} messages; node sent back {res.received or '-'}")
    if res.hostile:
        print(f"    hostile call: {res.hostile}")
    if h:
        print(
            f"    healthy call: audio in {h.get('target_rx_fps')} / out {h.get('target_tx_fps')} "
            f"frames/s, segments {h.get('segments_arrived')} arrived of "
            f"{h.get('segments_said')} said" + ("" if h.get("flowing") else f" -- {h.get('why')}")
        )
    print(f"    node log +{res.log_lines} lines, database +{res.db_growth_mb:g} MB")
    if res.exports:
        print(f"    exports: {res.exports}")
    for problem in res.problems:
        print(f"    ! {problem}")
    if res.log_tail:
        print("    last log lines:\n      " + res.log_tail.replace("\n", "\n      "))
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """The live mode: every chosen attack, a summary, exit status 0 only if all held."""
    if args.attacks == "all":
        attacks = list(ATTACKS)
    else:
        by_name = {a.name: a for a in ATTACKS}
        wanted = [n.strip() for n in args.attacks.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in by_name]
        if unknown or not wanted:
            print(f"unknown attacks {unknown}; choose from {', '.join(by_name)}")
            return 2
        attacks = [by_name[n] for n in wanted]
    if args.seconds <= 0 or args.deadline <= 0:
        print("--seconds and --deadline must be positive")
        return 2
    work = Path(tempfile.mkdtemp(prefix="intellimeet-fuzz-live-"))
    print(
        f"live wire fuzz: {len(attacks)} attacks of {args.seconds:g} s against a node "
        f"with a healthy call, /healthz every {args.probe_interval_ms:g} ms; "
        f"limit {args.max_latency_ms:g} ms; data in {work}"
    )
    fuzz = LiveFuzz(args, work, attacks)
    results: list[Result] = []
    error = None
    try:
        results = fuzz.run()
    except (NodeError, requests.RequestException, OSError) as exc:
        error = f"live fuzz could not run: {exc}"
        print(error)
        for node in (fuzz.target, fuzz.peer):
            print(f"--- {node.name} log:\n{node.log_tail(20)}")
    finally:
        fuzz.close()
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results if not r.ok]
    worst = max((r.latency.get("worst_ms", 0) for r in results if r.latency), default=math.inf)
    print(
        f"\nworst /healthz latency {worst:g} ms over {len(results)} windows; "
        f"{len(failed)} failed" + (f": {', '.join(r.attack for r in failed)}" if failed else "")
    )
    if args.report:
        args.report.write_text(
            json.dumps(
                {"error": error, "worst_ms": worst, "results": [r.__dict__ for r in results]},
                indent=2,
                default=str,
            )
        )
    return 1 if error or failed or not results else 0
