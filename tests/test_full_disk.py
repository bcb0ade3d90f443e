"""A full disk under the database: the call whose transcript cannot be kept ends with the
reason, /healthz says so, what was committed stays, and the node recovers when space
returns. A real SQLite database on a real, small tmpfs (mounting one needs root, which CI
and these machines have; elsewhere the test is skipped, or fails with IM_REQUIRE_ROOT=1).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import unavailable, wait_until
from wire import dial_handshake

from service.localnodes import NodeProcess
from service.transport import protocol as p

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        unavailable("IM_REQUIRE_ROOT", "mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        unavailable("IM_REQUIRE_ROOT", f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take all of ``disk`` but ``leave_bytes``."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


def test_a_full_disk_ends_the_call_with_the_reason_and_reports_unhealthy(
    tmp_path, small_disk, model_dir
):
    """Before: "database or disk is full" killed the receive loop; the call stayed
    `connected`, stopped reading the peer and held its slot, while /healthz said ok."""
    node = NodeProcess(
        "A",
        tmp_path / "a",
        env={"IM_DATABASE_URL": f"sqlite:///{small_disk / 'node.db'}"},
        model_dir=model_dir,
    )
    with node:
        call = node.call(
            "POST",
            "/sessions",
            201,
            json={"mode": "listen", "port": 0, "input": "silence", "output": None},
        )
        host, port = call["address"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            answer, _ = dial_handshake(sock, call["token"], transcribes=True)
            assert isinstance(answer, p.Auth)
            sock.sendall(p.encode(p.Transcript(no=0, start=0.1, end=0.5, text="kept")))
            session = f"/sessions/{call['id']}"
            wait_until(
                lambda: node.call("GET", session)["stats"]["segments"]["remote"] == 1,
                5,
                "the first segment",
            )
            filler = fill(small_disk, leave_bytes=8 * 1024)
            with contextlib.suppress(OSError):  # the node may hang up before the last
                for n in range(1, 41):
                    sock.sendall(
                        p.encode(p.Transcript(no=n, start=0.1 * n, end=0.1 * n, text="x" * 150))
                    )
            ended = wait_until(
                lambda: (s := node.call("GET", session))["state"] == "ended" and s,
                10,
                "the call to end",
            )
        assert ended["end_reason"].startswith("storage_failed: "), ended["end_reason"]
        assert "full" in ended["end_reason"]
        health = node.request("GET", "/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "storage_failed" and health.json()["storage_error"]
        texts = [s["text"] for s in node.call("GET", f"{session}/transcript")["segments"]]
        assert texts[0] == "kept"

        filler.unlink()  # space returns: the next write succeeds and the node is well again
        node.call(
            "POST",
            "/sessions",
            201,
            json={"mode": "listen", "port": 0, "input": "silence", "output": None},
        )
        assert node.request("GET", "/healthz").status_code == 200
