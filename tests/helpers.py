"""What tests share besides fixtures (those are in conftest.py, which nothing imports):
one way to wait, the repo's own speech clip, the skip-or-fail rule, in-process nodes and
node processes.

Waiting: `wait_until` is the one polling loop. It sleeps with ``gevent.sleep``, which is
right everywhere a test waits: in a greenlet or on the hub's own thread (an in-process node,
whose greenlets must run while the test waits; a plain ``time.sleep`` would freeze them in
this unpatched process), and on a thread with no greenlets at all (a test that drives node
processes over HTTP), where gevent.sleep simply sleeps.
"""

from __future__ import annotations

import csv
import os
import time
import wave
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import gevent
import numpy as np
import pytest

if TYPE_CHECKING:
    from service.audio.codecs import Encoder
    from service.localnodes import NodeProcess
    from service.node import Node

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# The repo's own clip (no external data needed), looped where a test must still be
# speaking when something happens to it.
JFK_CLIP = ROOT / "scripts/data/en_jfk_inaugural_1961.wav"


# --- waiting ------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], T],
    timeout: float = 5.0,
    what: str | Callable[[], str] = "the condition",
    step: float = 0.02,
) -> T:
    """Call ``check`` every ``step`` seconds until it returns something truthy, and return
    that. Past ``timeout`` fail with ``what`` (a callable is asked only then, so that the
    message can show the last state seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        gevent.sleep(step)


def get_session(api: Any, call_id: str) -> dict[str, Any]:
    """``GET /sessions/<call_id>`` from a NodeProcess or a Flask test client."""
    path = f"/sessions/{call_id}"
    if hasattr(api, "call"):  # a NodeProcess
        return api.call("GET", path)
    return api.get(path).get_json()


def wait_state(
    api: Any, call_id: str, states: Collection[str], timeout: float = 10.0
) -> dict[str, Any]:
    """Poll ``GET /sessions/<call_id>`` (a Flask test client or a NodeProcess) until the
    call is in one of ``states``; returns that snapshot."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = get_session(api, call_id)
        return last if last["state"] in states else None

    return wait_until(
        reached, timeout, lambda: f"call {call_id} to reach {sorted(states)}: {last}", step=0.05
    )


# --- data and dependencies ----------------------------------------------------------------


def looped_clip(path: Path, times: int) -> Path:
    """JFK_CLIP said ``times`` times over, written to ``path``."""
    with wave.open(str(JFK_CLIP), "rb") as w:
        params = w.getparams()
        pcm = w.readframes(w.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(pcm * times)
    return path


def reference(speech_dir: Path, file: str) -> str:
    """The reference transcript of `file` from manifest.tsv (tab-separated, never quoted)."""
    with open(speech_dir / "manifest.tsv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["file"] == file:
                return row["reference_text"]
    raise KeyError(f"{file} is not in {speech_dir / 'manifest.tsv'}")


def scaled_to(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    """`pcm` at `dbfs` RMS over its active 20 ms frames (within 40 dB of the loudest), as
    scripts/build_voices measures a level: a quiet talker built from a dev clip."""
    x = pcm.astype(np.float64)
    frames = x[: x.size // 320 * 320].reshape(-1, 320)
    power = np.mean(frames**2, axis=1)
    active = np.sqrt(np.mean(power[power >= power.max() * 1e-4]))
    return np.round(x * 32768 * 10 ** (dbfs / 20) / active).astype(np.int16)


def unavailable(require_var: str, message: str) -> NoReturn:
    """A dependency the tests need is missing: skip, or fail where `require_var` is 1 (CI,
    where these tests must run and never skip quietly)."""
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{require_var}=1 but {message}", pytrace=False)
    pytest.skip(message)


# --- what a call uses ------------------------------------------------------------------


def call_encoder(**env: str) -> Encoder:
    """The Opus encoder a call sends with, made by the node's own code from the settings
    ``env`` (IM_OPUS_BITRATE, IM_OPUS_FRAME_MS; the defaults when empty): what a codec test
    must measure, rather than options of its own."""
    from service.calls.media import make_call_encoder
    from service.config import load_settings

    return make_call_encoder("opus", load_settings(env))


# --- nodes --------------------------------------------------------------------------------

# What every test node needs on loopback: calls bound to and advertised as 127.0.0.1.
LOOPBACK = {"IM_CALL_HOST": "127.0.0.1", "IM_ADVERTISE_HOST": "127.0.0.1"}


def start_node(data_dir: Path, **env: str) -> Node:
    """A started Node in this process, without a Whisper model (tests about the wire, the
    API and the store load none). The process is not monkey-patched: wait with
    `wait_until`, which lets the node's greenlets run."""
    from service.config import load_settings
    from service.node import Node

    node = Node(load_settings({"IM_DATA_DIR": str(data_dir), **LOOPBACK, **env}), load_model=False)
    node.start()
    return node


def store_call(store: Any, call_id: str, **fields: Any) -> None:
    """A call row as the registry writes one (zero counters; ``fields`` override), for
    tests that fill a store directly."""
    store.add_call(
        **{
            "id": call_id,
            "mode": "listen",
            "state": "listening",
            "transcribe": True,
            "frames_sent": 0,
            "frames_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            **fields,
        }
    )


class NodeFactory:
    """In-process nodes for one test, each in its own data folder under ``root`` (the same
    name, the same folder and database), closed when the test ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: list[Node] = []

    def __call__(self, name: str = "node", **env: str) -> Node:
        node = start_node(self.root / name, **env)
        self._open.append(node)
        return node

    def close(self, node: Node) -> None:
        """Close ``node`` now (e.g. to start another on its database)."""
        self._open.remove(node)
        node.close()

    def close_all(self) -> None:
        while self._open:
            self._open.pop().close()


# Node processes: a short hello deadline, so that a test of a silent connection is quick.
PROCESS_ENV = {"IM_HELLO_TIMEOUT_S": "2"}


@contextmanager
def node_processes(
    root: Path,
    names: Iterable[str],
    model_dir: Path,
    env: dict[str, str] | None = None,
    kill: bool = False,
) -> Iterator[list[NodeProcess]]:
    """Real `python -m service` processes, one per name (each its own API port, data folder
    and database under ``root``), started in order and all ended on leaving, the started
    ones too when a later one fails to start. ``kill`` ends them with SIGKILL (which also
    ends a frozen process) instead of a clean stop."""
    from service.localnodes import NodeProcess

    with ExitStack() as stack:
        started = []
        for name in names:
            node = NodeProcess(
                name, root / name.lower(), env={**PROCESS_ENV, **(env or {})}, model_dir=model_dir
            )
            stack.callback(node.kill if kill else node.stop)
            started.append(node.start())
        yield started


# --- metrics ------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """A /metrics answer through prometheus_client's own parser, as ``name{k=v,...}`` (labels
    sorted, no quotes) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out
