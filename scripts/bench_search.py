"""Search benchmark (not a test): ranked full-text queries over 10^5 stored segments, on
SQLite and on PostgreSQL, through the same Store.search the API calls.

The archive is built through the real index of migrations 0005 and 0010 (FTS5 triggers;
the tsvector column's trigger): 1000 calls on 3 nodes, 100 segments each, both speakers, of
English text made by a word-bigram chain over the speech set's English references and this
repository's own prose (README and docs), so that word frequencies look like speech, not
like random letters. Then each query runs --repeat times (after one warm-up) and p50/p95 in ms are
printed per query and over all of them. PostgreSQL is a throwaway server started with
scripts/postgres (as the tests do), or IM_TEST_POSTGRES_URL.

    scripts/bench_search                         # 10^5 segments, both databases
    scripts/bench_search --segments 20000 --backends sqlite
    scripts/bench_search --explain --repeat 0      # each query's plan: what it reads
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from service.store import search  # noqa: E402
from service.store.db import Store, parse_url  # noqa: E402
from service.store.models import Call, SegmentRow  # noqa: E402

SPEECH = Path(os.environ.get("IM_SPEECH_DIR") or ROOT.parent / "shared/data/speech")
NODES = ("gpu-a", "gpu-b", "gpu-c")
QUERIES = {
    "rare word": "gregson",
    "common word": "the",
    "two words": "node call",
    "phrase": '"the node"',
    "prefix": "transcri*",
    "word + speaker + node": "model speaker:remote",
    "three words, no hit": "zebra quantum marmalade",
    "phrase + prefix": '"live feed" even*',
}


def corpus() -> list[str]:
    """Sentences of real English: the speech references, then the repository's prose."""
    text: list[str] = []
    manifest = SPEECH / "manifest.tsv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            text += [
                r["reference_text"]
                for r in csv.DictReader(f, delimiter="\t")
                if r["language"] == "en"
            ]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        prose = re.sub(
            r"```.*?```|`[^`]*`|\|[^\n]*\||https?://\S+", " ", doc.read_text(), flags=re.S
        )
        text += re.split(r"(?<=[.!?])\s+", prose)
    return [" ".join(re.findall(r"[A-Za-z][A-Za-z']*[.,]?", s)) for s in text if len(s.split()) > 3]


def sentences(seed: int) -> object:
    """An endless stream of made-up sentences from a word-bigram chain over corpus()."""
    rng = random.Random(seed)
    follows: dict[str, list[str]] = defaultdict(list)
    starts = []
    for s in corpus():
        words = s.split()
        starts.append(words[0])
        for a, b in zip(words, [*words[1:], "<end>"], strict=True):
            follows[a.lower()].append(b)
    while True:
        word, out = rng.choice(starts), []
        while word != "<end>" and len(out) < 30:
            out.append(word)
            word = rng.choice(follows.get(word.lower()) or ["<end>"])
        if len(out) >= 4:
            yield " ".join(out)


def build(url: str, n_segments: int) -> Store:
    store = Store(url)
    store.upgrade()
    per_call = 100
    gen = sentences(15)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    calls, segments = [], []
    for i in range(max(1, n_segments // per_call)):
        cid = uuid.UUID(int=i).hex
        calls.append(
            {
                "id": cid,
                "mode": "dial",
                "state": "ended",
                "transcribe": True,
                "created_at": t0 + timedelta(hours=i),
                "node_id": NODES[i % 3],
                "frames_sent": 0,
                "frames_received": 0,
                "bytes_sent": 0,
                "bytes_received": 0,
            }
        )
        for n in range(per_call):
            segments.append(
                {
                    "call_id": cid,
                    "speaker": ("local", "remote")[n % 2],
                    "number": n,
                    "start_s": n * 4.0,
                    "end_s": n * 4.0 + 3.5,
                    "text": next(gen),
                    "created_at": t0 + timedelta(hours=i, seconds=n * 4),
                }
            )
    started = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(insert(Call), calls)
        for k in range(0, len(segments), 5000):
            conn.execute(insert(SegmentRow), segments[k : k + 5000])
    if store.engine.dialect.name == "postgresql":
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    print(
        f"  built {len(segments)} segments in {len(calls)} calls in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return store


def explain(store: Store, terms: tuple[search.Term, ...], filters: search.Filters) -> str:
    """What the query reads. PostgreSQL: the rows its plan read from `segments` (returned
    or filtered away, times loops) and the buffers it touched; SQLite: its plan's steps."""
    dialect = store.engine.dialect
    stmt = search.statement(dialect.name, terms, filters, 21, 0)
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        if dialect.name == "sqlite":
            steps = conn.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
            return "; ".join(step[3] for step in steps)
        (plan,) = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)).scalar_one()
    read, todo = 0, [plan["Plan"]]
    while todo:
        node = todo.pop()
        todo += node.get("Plans", [])
        if node.get("Relation Name") == "segments":
            removed = node.get("Rows Removed by Filter", 0)
            removed += node.get("Rows Removed by Index Recheck", 0)
            read += (node["Actual Rows"] + removed) * node["Actual Loops"]
    top = plan["Plan"]
    buffers = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    return f"segment rows read {read}, buffers {buffers}"


def run(store: Store, repeat: int, plans: bool = False) -> list[float]:
    every: list[float] = []
    for label, q in QUERIES.items():
        filters = search.Filters()
        if "speaker:" in q:
            q, speaker = q.split(" speaker:")
            filters = search.Filters(speaker=speaker, node=NODES[1])
        terms = search.parse(q)
        if plans:
            print(f"  {label:24} {explain(store, terms, filters)}")
        hits = store.search(terms, filters, 21, 0)  # warm-up; the API asks for limit + 1
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            store.search(terms, filters, 21, 0)
            times.append((time.perf_counter() - t) * 1000)
        every += times
        if not times:
            continue
        print(
            f"  {label:24} {q!r:30} hits>= {len(hits):3}  p50 {pct(times, 50):6.1f} ms  "
            f"p95 {pct(times, 95):6.1f} ms"
        )
    if every:
        print(
            f"  {'all queries':24} {'':30} {'':9}  p50 {pct(every, 50):6.1f} ms  "
            f"p95 {pct(every, 95):6.1f} ms"
        )
    return every


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def postgres_database(stack: list) -> str:
    url = os.environ.get("IM_TEST_POSTGRES_URL")
    if not url:
        directory = tempfile.mkdtemp(prefix="im-bench-pg-", dir="/tmp")
        out = subprocess.run(
            [str(ROOT / "scripts/postgres"), "start", directory],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        stack.append(
            lambda: (
                subprocess.run([str(ROOT / "scripts/postgres"), "stop", directory], check=False),
                shutil.rmtree(directory, True),
            )
        )
        url = out.strip().split("=", 1)[1].strip("'")
    admin = create_engine(parse_url(url), isolation_level="AUTOCOMMIT")
    name = f"im_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    stack.append(drop)
    return parse_url(admin.url.set(database=name)).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--explain", action="store_true", help="print what each query reads")
    args = parser.parse_args()
    cleanup: list = []
    try:
        for backend in args.backends:
            print(f"{backend}:")
            if backend == "sqlite":
                folder = tempfile.mkdtemp(prefix="im-bench-search-")
                cleanup.append(lambda f=folder: shutil.rmtree(f, True))
                url = f"sqlite:///{folder}/bench.db"
            else:
                url = postgres_database(cleanup)
            store = build(url, args.segments)
            try:
                run(store, args.repeat, args.explain)
            finally:
                store.engine.dispose()
    finally:
        for undo in reversed(cleanup):
            undo()


if __name__ == "__main__":
    main()
