"""openai-whisper's download path, against a real HTTP server on loopback standing in for the
download host (which cannot be reached from here): a good file is cached and loads, a wrong
SHA-256 or a cut connection leaves nothing the node would load, a killed download leaves only
a part file that is never loaded, and without a network the error comes at once, at start,
naming the file to place and where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, wait_until

from service.asr import catalogue
from service.asr.weights import WeightsError, checkpoint_path, fetch_official, load_model
from service.localnodes import free_port


class Server:
    """http.server in a thread; `routes` maps a path to (body, mode)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.release = threading.Event()  # ends "stall" responses
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, mode = server.routes.get(self.path, (b"", "missing"))
                if mode == "missing":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "ok":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    server.release.wait(60)
                self.close_connection = True  # "cut": the rest never comes

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_port}/models"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, info: catalogue.ModelInfo, body: bytes, mode: str = "ok") -> None:
        self.routes[f"/models/{info.sha256}/{info.file}"] = (body, mode)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real checkpoint to serve: tiny.en, converted from its package."""
    return checkpoint_path("tiny.en", tmp_path_factory.mktemp("src")).read_bytes()


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


@pytest.mark.slow  # starts a process or loads a model
def test_good_file_is_cached_and_loads(server: Server, tmp_path: Path, tiny_bytes: bytes) -> None:
    # The server's file is our tiny.en checkpoint, so its digest stands in for OpenAI's.
    info = dataclasses.replace(
        catalogue.lookup("tiny.en"), sha256=hashlib.sha256(tiny_bytes).hexdigest()
    )
    server.serve(info, tiny_bytes)
    path = fetch_official(info, tmp_path, server.base, use_bundled=False)
    assert path == tmp_path / "tiny.en.pt"
    assert path.read_bytes() == tiny_bytes
    assert leftovers(tmp_path) == ["tiny.en.pt"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    model = load_model("tiny.en", tmp_path, "cpu")  # found in the cache, nothing converted
    assert model.dims.n_vocab == 51864 and leftovers(tmp_path) == ["tiny.en.pt"]


def test_wrong_sha256_is_refused_and_nothing_cached(
    server: Server, tmp_path: Path, tiny_bytes: bytes
) -> None:
    info = catalogue.lookup("tiny")  # OpenAI's digest; the server sends other bytes
    server.serve(info, tiny_bytes)
    with pytest.raises(WeightsError, match=r"SHA-256 of the .* expected 65147644") as e:
        checkpoint_path("tiny", tmp_path, download_base=server.base)
    assert f"place tiny.pt (SHA-256 {info.sha256}" in str(e.value)
    assert str(tmp_path / "tiny.pt") in str(e.value)
    assert leftovers(tmp_path) == []


def test_cut_connection_leaves_nothing(server: Server, tmp_path: Path, tiny_bytes: bytes) -> None:
    server.serve(catalogue.lookup("tiny"), tiny_bytes, "cut")
    with pytest.raises(WeightsError, match="connection closed after"):
        checkpoint_path("tiny", tmp_path, download_base=server.base)
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # starts a process or loads a model
def test_killed_download_leaves_no_file_the_node_would_load(
    server: Server, tmp_path: Path, tiny_bytes: bytes
) -> None:
    info = catalogue.lookup("tiny")
    server.serve(info, tiny_bytes, "stall")
    env = {**os.environ, "IM_MODEL_DOWNLOAD_BASE": server.base, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.asr.weights", "tiny", "--model-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        part = wait_until(
            lambda: next((p for p in tmp_path.glob(".tiny.pt.*.part") if p.stat().st_size), None),
            timeout=60,
            what="half the file written",
            step=0.05,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert leftovers(tmp_path) == [part.name]  # no tiny.pt
    with pytest.raises(WeightsError, match="does not exist"):
        checkpoint_path("tiny", tmp_path, download=False)
    # The next download removes what the killed one left once it is stale.
    old = time.time() - 3600
    os.utime(part, (old, old))
    server.serve(info, tiny_bytes, "cut")
    with pytest.raises(WeightsError):
        checkpoint_path("tiny", tmp_path, download_base=server.base)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("base", ["closed-port", "http://weights.invalid/models"])
def test_unreachable_host_fails_within_seconds(tmp_path: Path, base: str) -> None:
    if base == "closed-port":
        base = f"http://127.0.0.1:{free_port()}/models"
    started = time.monotonic()
    with pytest.raises(WeightsError, match="could not be downloaded") as e:
        checkpoint_path("small", tmp_path, download_base=base)
    assert time.monotonic() - started < 5
    assert f"place small.pt (SHA-256 {catalogue.lookup('small').sha256}" in str(e.value)
    assert str(tmp_path / "small.pt") in str(e.value)
    assert leftovers(tmp_path) == []


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.slow  # starts a process or loads a model
def test_node_without_network_refuses_at_start(tmp_path: Path) -> None:
    """A node asked for a model it does not have, on a host with no network at all (a network
    namespace with nothing in it, with openai-whisper's own URL), stops at start with the
    message, instead of serving and failing its first call."""
    if not unshare_works():
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "IM_MODEL": "large-v3-turbo",
        "IM_MODEL_DIR": str(tmp_path / "models"),
        "IM_DATA_DIR": str(tmp_path / "data"),
        "IM_API_PORT": str(free_port()),
    }
    env.pop("IM_MODEL_DOWNLOAD_BASE", None)
    started = time.monotonic()
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "node failed to start" in proc.stderr
    assert "large-v3-turbo.pt" in proc.stderr and str(tmp_path / "models") in proc.stderr
    assert catalogue.lookup("turbo").url() in proc.stderr
    assert elapsed < 60, f"took {elapsed:.1f} s"
    # Failing fast is the download's doing, not the start's: it gave up at once.
    lines = proc.stderr.splitlines()
    assert any("downloading" in line for line in lines)
    assert leftovers(tmp_path / "models") == []
