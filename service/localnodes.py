"""Running call nodes as local processes and driving them over HTTP.

The demo, the end-to-end tests and the benchmarks all need "two (or more) real nodes on
loopback"; this is that, once. Each node is a separate `python -m service` process with
its own API port and database, exactly as on two hosts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


def process_memory_kib(pid: int) -> dict[str, int]:
    """``{"rss": ..., "peak": ...}`` in KiB. Linux's /proc gives the kernel's own
    high-water mark (VmHWM), which catches a spike between two samples; elsewhere psutil
    (when installed) gives the current RSS only, so the peak is what was sampled."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        fields = {}
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])  # "1234 kB"
        return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}
    import psutil  # not on Linux: the only other way to ask

    rss = psutil.Process(pid).memory_info().rss // 1024
    return {"rss": rss, "peak": rss}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeError(RuntimeError):
    pass


class NodeProcess:
    def __init__(
        self,
        name: str,
        data_dir: Path,
        env: dict[str, str] | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "node.log"
        self.env = {
            **os.environ,
            "IM_API_HOST": "127.0.0.1",
            "IM_API_PORT": str(self.port),
            "IM_DATA_DIR": str(self.data_dir),
            "IM_MEDIA_DIR": str(self.data_dir / "media"),
            "IM_CALL_HOST": "127.0.0.1",
            "IM_ADVERTISE_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **({"IM_MODEL_DIR": str(model_dir)} if model_dir else {}),
            **(env or {}),
        }
        # The one folder `file:` inputs and recordings may use (media() places clips there).
        self.media_dir = Path(self.env["IM_MEDIA_DIR"])
        self.proc: subprocess.Popen | None = None
        # e.g. ["ip", "netns", "exec", NAME] to run the node in another network namespace
        self.command_prefix: list[str] = []
        self.http = requests.Session()

    def media(self, clip: Path, name: str | None = None) -> str:
        """Put `clip` in this node's media folder (a hard link, or a copy across file
        systems; a symlink would be refused) and return its `file:` input spec."""
        name = name or Path(clip).name
        self.media_dir.mkdir(parents=True, exist_ok=True)
        placed = self.media_dir / name
        if not placed.exists():
            try:
                os.link(clip, placed)
            except OSError:
                shutil.copyfile(clip, placed)
        return f"file:{name}"

    def start(self, timeout: float = 180.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "service"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeError(f"node {self.name} exited at start:\n{self.log_tail()}")
            try:
                if self.http.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise NodeError(f"node {self.name} not healthy within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.http.request(method, self.url + path, **kwargs)

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        if r.status_code != expect:
            raise NodeError(f"{self.name}: {method} {path} -> {r.status_code} {r.text}")
        return (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise NodeError(f"node {self.name} was never started")
        return self.proc.pid

    def freeze(self) -> None:
        """SIGSTOP: the process stops reading and writing, but its sockets stay open —
        a peer that hangs, as opposed to one that dies."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout: float = 180.0) -> NodeProcess:
        """Start again on the same data directory and database (after kill() or stop()),
        on a fresh API port so a port still held by the old process cannot get in the way."""
        if self.proc is not None and self.proc.poll() is None:
            raise NodeError(f"node {self.name} is still running")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env["IM_API_PORT"] = str(self.port)
        return self.start(timeout)

    def memory_kib(self) -> dict[str, int]:
        """Resident set size now and its peak (high-water mark), in KiB."""
        return process_memory_kib(self.pid)

    def log_lines(self, level: str = "ERROR") -> list[str]:
        """Log lines at `level` (the format is "<time> LEVEL logger: message")."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if f" {level} " in line]

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_call(
    listener: NodeProcess, dialer: NodeProcess, listen: dict, dial: dict
) -> tuple[dict, dict]:
    """A listens, B dials it; returns both creation responses once B is connected."""
    a = listener.call("POST", "/sessions", 201, json={"mode": "listen", "port": 0, **listen})
    b = dialer.call(
        "POST",
        "/sessions",
        201,
        json={"mode": "dial", "peer": a["address"], "token": a["token"], **dial},
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = dialer.call("GET", f"/sessions/{b['id']}")["state"]
        if state == "connected":
            return a, b
        if state in ("failed", "ended"):
            break
        time.sleep(0.05)
    last = dialer.call("GET", f"/sessions/{b['id']}")
    raise NodeError(f"call did not connect: {last}")


def wait_for_final_transcripts(
    speaker_node: NodeProcess,
    speaker_call: str,
    peer_node: NodeProcess,
    peer_call: str,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Wait until the speaking side's input has ended and every segment it will produce is
    readable on both nodes. Returns, per node, when its last segment became readable
    (seconds after the end of the input) and the segments themselves."""
    seen: dict[str, tuple[int, float]] = {"speaker": (0, 0.0), "peer": (0, 0.0)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        status = speaker_node.call("GET", f"/sessions/{speaker_call}")
        counts = {}
        for key, node, call in (
            ("speaker", speaker_node, speaker_call),
            ("peer", peer_node, peer_call),
        ):
            segs = node.call("GET", f"/sessions/{call}/transcript")["segments"]
            counts[key] = len(segs)
            if len(segs) != seen[key][0]:
                seen[key] = (len(segs), now)
        stats = status["stats"]
        done = (
            stats["input"].get("ended")
            and stats["asr_pending"] == 0
            and not stats["in_speech"]
            and counts["speaker"] == counts["peer"]
        )
        if done:
            ended_at = stats["input"]["ended_at"]
            return {
                "input_ended_at": ended_at,
                "speaker_latency_s": max(0.0, seen["speaker"][1] - ended_at),
                "peer_latency_s": max(0.0, seen["peer"][1] - ended_at),
                "speaker_segments": speaker_node.call(
                    "GET", f"/sessions/{speaker_call}/transcript"
                )["segments"],
                "peer_segments": peer_node.call("GET", f"/sessions/{peer_call}/transcript")[
                    "segments"
                ],
            }
        time.sleep(0.05)
    raise NodeError("transcripts did not settle in time")
