"""scripts/bench_gpu's CPU-safe parts: argument checks, the dry run, the refusal without CUDA,
and the whole code path once on a CPU (float32, one short call). The real run needs a GPU:
`scripts/bench_gpu` on a CUDA host (README)."""

from __future__ import annotations

import subprocess

import pytest
import torch
from helpers import ROOT

SCRIPT = ROOT / "scripts/bench_gpu"


def bench_gpu(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_dry_run_prints_the_plan_and_loads_nothing(speech_dir) -> None:
    r = bench_gpu("--dry-run", "--manifest", str(speech_dir))
    assert r.returncode == 0, r.stderr
    assert "load tiny.en and check its warm-up" in r.stdout
    assert "load base and check its warm-up" in r.stdout
    assert "bench_asr --model base --device cuda --compute-type float16 --calls 1 16 64" in r.stdout
    assert "largest N with p95 final latency <= 1.5 s" in r.stdout
    assert "weights tiny.en:" in r.stdout and "dry run: nothing loaded" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calls", "0"], "--calls must be between 1 and 256"),
        (["--calls", "16", "1"], "--calls must be increasing"),
        (["--models", "large-v9"], "unknown model 'large-v9'"),
        (["--bench-model", "huge"], "unknown model 'huge'"),
        (["--target-p95", "0"], "--target-p95 must be"),
        (["--max-audio-s", "1000"], "--max-audio-s must be"),
        (["--device", "tpu"], "--device must be cuda, cuda:N or cpu"),
        (["--budget-s", "5"], "--budget-s must be"),
        (["--manifest", "/nonexistent"], "no manifest.tsv under /nonexistent"),
        (["--calls", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    r = bench_gpu("--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
@pytest.mark.slow  # starts a process or loads a model
def test_without_cuda_it_says_so(speech_dir) -> None:
    r = bench_gpu("--manifest", str(speech_dir))
    assert r.returncode == 3 and "no CUDA device" in r.stderr and "--dry-run" in r.stderr


@pytest.mark.slow
def test_the_whole_path_runs_on_a_cpu(speech_dir) -> None:
    r = bench_gpu(
        "--device", "cpu", "--models", "tiny.en", "--bench-model", "tiny.en", "--calls", "1",
        "--max-audio-s", "10", "--budget-s", "120", "--manifest", str(speech_dir),
        timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tiny.en: loaded+warmed" in r.stdout and "ok (float32)" in r.stdout
    assert "largest N with p95 <= 1.5 s:" in r.stdout or "no N kept p95" in r.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_run(speech_dir) -> None:
    r = bench_gpu("--manifest", str(speech_dir), timeout=540)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "largest N with p95 <= 1.5 s:" in r.stdout
