"""The live wire fuzz in miniature: `scripts/fuzz_wire --live` on two attacks with a short
budget, against real node processes, must exit 0.

The two are the cheapest of the ones that took a node down: audio seq 2**31 then 0 in one
write (it froze the playout loop) and a ping flood (a receive loop answering pongs without
ever yielding). Each runs on its own listening call while a healthy call with speech keeps
going on the same node; the script fails if /healthz ever took 100 ms or more, the node
died or hung, or the healthy call stopped moving audio or transcript.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = "seq-2^31-then-0,flood-ping"


def test_live_fuzz_keeps_node_responsive(tmp_path: Path, model_dir: Path) -> None:
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "fuzz_wire.py"),
            "--live",
            "--attacks",
            ATTACKS,
            "--seconds",
            "1.5",
            "--settle",
            "1",
            "--recover-s",
            "5",
            "--deadline",
            "150",
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = run.stdout + run.stderr
    assert report.is_file(), out
    results = json.loads(report.read_text())["results"]
    assert [r["attack"] for r in results] == ["(baseline)", *ATTACKS.split(",")], out
    assert run.returncode == 0, out
