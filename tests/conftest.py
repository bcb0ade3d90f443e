"""Shared fixtures: the speech evaluation set lives outside the repo (shared/data/speech),
and the databases the store and API tests run on.

``database_url`` runs a test twice: on a fresh SQLite file, and on a fresh database of a real
PostgreSQL server. The server is ``IM_TEST_POSTGRES_URL`` (a superuser URL, e.g. from
``eval "$(scripts/postgres start DIR)"``) or else a throwaway one this session starts with
scripts/postgres when PostgreSQL is installed. Without one the PostgreSQL runs are skipped;
``IM_REQUIRE_POSTGRES=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The repo's own clip (no external data needed), looped where a test must still be
# speaking when something happens to it.
JFK_CLIP = ROOT / "scripts/data/en_jfk_inaugural_1961.wav"


def looped_clip(path: Path, times: int) -> Path:
    with wave.open(str(JFK_CLIP), "rb") as w:
        params = w.getparams()
        pcm = w.readframes(w.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(pcm * times)
    return path


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    """Poll `predicate` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


POSTGRES_SCRIPT = ROOT / "scripts" / "postgres"
# Every test database gets a zone far from UTC, so that a timestamp read back in the server's
# zone instead of UTC shows up as a failure instead of passing by luck on a UTC machine.
TEST_DB_TIMEZONE = "America/St_Johns"


def unavailable(require_var: str, message: str) -> NoReturn:
    """A dependency the tests need is missing: skip, or fail where `require_var` is 1 (CI,
    where these tests must run and never skip quietly)."""
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{require_var}=1 but {message}", pytrace=False)
    pytest.skip(message)


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


def reference(speech_dir: Path, file: str) -> str:
    """The reference transcript of `file` from manifest.tsv (tab-separated, never quoted)."""
    with open(speech_dir / "manifest.tsv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["file"] == file:
                return row["reference_text"]
    raise KeyError(f"{file} is not in {speech_dir / 'manifest.tsv'}")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The repo's model cache (scripts/setup fills it), converted here if it is not."""
    from service.asr.weights import checkpoint_path

    cache = Path(__file__).resolve().parents[1] / "data" / "models"
    checkpoint_path("tiny.en", cache)
    return cache


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
