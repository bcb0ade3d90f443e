"""Shared fixtures (helpers that are not fixtures live in helpers.py; nothing imports this
file): the speech evaluation set and the model cache, in-process nodes and their API client,
a pair of node processes, the virtual sound devices, and the databases the store and API
tests run on.

``slow`` is on every test that loads a Whisper model or starts a process; the fixtures that
do either mark the tests using them (see SLOW_FIXTURES), so `-m "not slow"` stays fast.

``database_url`` runs a test twice: on a fresh SQLite file, and on a fresh database of a real
PostgreSQL server. The server is ``IM_TEST_POSTGRES_URL`` (a superuser URL, e.g. from
``eval "$(scripts/postgres start DIR)"``) or else a throwaway one this session starts with
scripts/postgres when PostgreSQL is installed. Without one the PostgreSQL runs are skipped;
``IM_REQUIRE_POSTGRES=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from audio_rig import RIG_ENV_KEYS, RIG_SCRIPT, AudioRig, _rig_start
from helpers import ROOT, NodeFactory, node_processes, unavailable

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from service.localnodes import NodeProcess
    from service.node import Node

POSTGRES_SCRIPT = ROOT / "scripts" / "postgres"
# Every test database gets a zone far from UTC, so that a timestamp read back in the server's
# zone instead of UTC shows up as a failure instead of passing by luck on a UTC machine.
TEST_DB_TIMEZONE = "America/St_Johns"


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """The speech clips and manifest.tsv; IM_SPEECH_DIR overrides the checkout-relative default."""
    path = Path(
        os.environ.get("IM_SPEECH_DIR")
        or Path(__file__).resolve().parents[2] / "shared/data/speech"
    )
    if not (path / "manifest.tsv").is_file():
        unavailable(
            "IM_REQUIRE_SPEECH", f"speech evaluation set not found at {path} (set IM_SPEECH_DIR)"
        )
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The repo's model cache (scripts/setup fills it), converted here if it is not."""
    from service.asr.weights import checkpoint_path

    cache = Path(__file__).resolve().parents[1] / "data" / "models"
    checkpoint_path("tiny.en", cache)
    return cache


# The fixtures that load a model or start a process: a test using one is slow.
SLOW_FIXTURES = frozenset({"model_dir", "node_pair", "audio_rig"})
# pytest-timeout: a fast test gets this long unless it says otherwise; slow ones get the
# default in pyproject.toml (or their own).
FAST_TIMEOUT_S = 120


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` what uses a SLOW_FIXTURES fixture; give each fast test its timeout."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT_S))


# --- nodes ----------------------------------------------------------------------------------


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Starts in-process, model-less nodes (``node_factory("b", IM_X="1")``), each in its own
    folder under tmp_path, and closes them after the test."""
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close_all()


@pytest.fixture
def node(node_factory: NodeFactory) -> Node:
    """One in-process node without a model. A module overrides this fixture to start it
    with other settings (and ``client`` then serves that one)."""
    return node_factory()


@pytest.fixture
def client(node: Node) -> FlaskClient:
    """The Flask test client of ``node``'s API."""
    from service.api import create_app

    return create_app(node).test_client()


@pytest.fixture(scope="module")
def node_pair_env() -> dict[str, str]:
    """Settings for ``node_pair`` besides helpers.PROCESS_ENV; a module overrides this."""
    return {}


@pytest.fixture(scope="module")
def node_pair(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, node_pair_env: dict[str, str]
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two node processes, A and B, with tiny.en, shared by one module's tests."""
    root = tmp_path_factory.mktemp("nodes")
    with node_processes(root, ("A", "B"), model_dir, node_pair_env) as (a, b):
        yield a, b  # stopped (SIGTERM) at the end of the module


# --- virtual sound devices --------------------------------------------------------------------


@pytest.fixture(scope="session")
def audio_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AudioRig]:
    """A private PulseAudio rig (or the running one IM_AUDIO_RIG names: see audio_rig.py)."""
    reuse = os.environ.get("IM_AUDIO_RIG")
    if not reuse and shutil.which("pulseaudio") is None:
        unavailable(
            "IM_REQUIRE_AUDIO_RIG",
            "pulseaudio is not installed, so there are no virtual sound devices "
            "(apt-get install pulseaudio pulseaudio-utils libasound2-plugins, or scripts/setup)",
        )
    if reuse:
        # Idempotent: on a running rig this only prints its exports (and revives readers).
        directory = Path(reuse)
        rig = AudioRig(
            directory, {k: v for k, v in _rig_start(directory).items() if k in RIG_ENV_KEYS}
        )
        try:
            yield rig
        finally:
            rig.cleanup()  # the rig itself belongs to whoever started it
        return
    directory = tmp_path_factory.mktemp("audio-rig")
    rig = AudioRig(directory, {k: v for k, v in _rig_start(directory).items() if k in RIG_ENV_KEYS})
    try:
        yield rig
    finally:
        rig.cleanup()
        subprocess.run([str(RIG_SCRIPT), "stop", str(directory)], timeout=60, check=False)


# --- databases --------------------------------------------------------------------------------


def _postgres_installed() -> bool:
    return bool(shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A superuser URL of a running PostgreSQL server (its maintenance database)."""
    url = os.environ.get("IM_TEST_POSTGRES_URL")
    if url:
        yield url  # whoever started it stops it
        return
    if not _postgres_installed():
        unavailable(
            "IM_REQUIRE_POSTGRES",
            "PostgreSQL is not installed and IM_TEST_POSTGRES_URL is not set "
            "(apt-get install postgresql, or scripts/setup)",
        )
    # Under /tmp, not pytest's tmp dir: as root the server runs as `postgres`, which must be
    # able to reach the directory, and the socket path must stay short.
    directory = tempfile.mkdtemp(prefix="intellimeet-pg-", dir="/tmp")
    proc = subprocess.run(
        [str(POSTGRES_SCRIPT), "start", directory], capture_output=True, text=True, timeout=120
    )
    try:
        if proc.returncode != 0:
            pytest.fail(f"scripts/postgres start failed:\n{proc.stderr}", pytrace=False)
        yield proc.stdout.strip().split("=", 1)[1].strip("'")
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", directory], timeout=120, check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin(postgres_server: str) -> Iterator[object]:
    """One autocommit engine on the server's maintenance database, for CREATE/DROP DATABASE."""
    from sqlalchemy import create_engine, text

    from service.store.db import parse_url

    engine = create_engine(parse_url(postgres_server), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        shown = engine.url.render_as_string(hide_password=True)
        pytest.fail(f"cannot reach PostgreSQL at {shown}: {exc}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards (with any open sessions)."""
    from service.store.db import parse_url

    name = f"im_test_{uuid.uuid4().hex[:16]}"
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone TO '{TEST_DB_TIMEZONE}'")
    try:
        yield parse_url(postgres_admin.url.set(database=name)).render_as_string(hide_password=False)
    finally:
        with postgres_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL of an empty database: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'calls.db'}"
    return request.getfixturevalue("postgres_url")
