"""Shared fixtures: the speech evaluation set lives outside the repo (shared/data/speech)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """The speech clips and manifest.tsv; IM_SPEECH_DIR overrides the checkout-relative default."""
    path = Path(
        os.environ.get("IM_SPEECH_DIR")
        or Path(__file__).resolve().parents[2] / "shared/data/speech"
    )
    if not (path / "manifest.tsv").is_file():
        message = f"speech evaluation set not found at {path} (set IM_SPEECH_DIR)"
        if os.environ.get("IM_REQUIRE_SPEECH") == "1":
            pytest.fail(message)  # CI: these tests must run, never skip quietly
        pytest.skip(message)
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
