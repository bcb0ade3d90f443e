"""A GPU run, ready to go: loads models on CUDA in float16, checks the warm-up, then runs
scripts/bench_asr's simulated calls at several N with one model and prints the largest N whose
p95 final latency (end of speech -> final committed) stays within the target, with GPU memory
and utilisation. Self-contained and bounded (default budget 7.5 minutes).

    scripts/bench_gpu                       # tiny.en + base warm-up, base at N = 1 16 64
    scripts/bench_gpu --dry-run             # check arguments, clips and weights; run nothing
    scripts/bench_gpu --bench-model large-v3-turbo --models large-v3-turbo --calls 1 8 32
    scripts/bench_gpu --device cpu --models tiny.en --bench-model tiny.en --calls 1
                                            # the same code path on a CPU (float32), for CI

Exit status: 0 done, 2 bad arguments, 3 no CUDA device (use --dry-run on a CPU host),
4 a check failed (warm-up too slow, a transcript far off, or the weights missing).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

DEFAULT_MANIFEST = ROOT.parent / "shared/data/speech"
WARM_CLIP = ROOT / "scripts/data/en_jfk_inaugural_1961.wav"
WARM_REFERENCE = (
    "And so, my fellow Americans, ask not what your country can do for you; ask what you can "
    "do for your country."
)
# Per run: the stream (max_audio_s at real time) plus draining and scoring.
RUN_OVERHEAD_S = 30.0
LOAD_ESTIMATE_S = 45.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from service.asr import catalogue

    ap = argparse.ArgumentParser(
        prog="scripts/bench_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", nargs="+", default=["tiny.en", "base"], help="warm-up checks")
    ap.add_argument("--bench-model", default="base", help="the model bench_asr runs with")
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 16, 64], help="N per run")
    ap.add_argument("--target-p95", type=float, default=1.5, help="p95 final latency, s")
    ap.add_argument("--max-audio-s", type=float, default=40.0, help="stream length per call")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke run)")
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "data/models")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting runs after")
    ap.add_argument("--dry-run", action="store_true", help="check and print the plan only")
    args = ap.parse_args(argv)

    def known(model: str) -> bool:
        return model in catalogue.NAMES or Path(model).exists()

    for model in [*args.models, args.bench_model]:
        if not known(model):
            ap.error(f"unknown model {model!r}: an official name ({', '.join(catalogue.NAMES)})")
    if any(n < 1 or n > 256 for n in args.calls):
        ap.error(f"--calls must be between 1 and 256, got {args.calls}")
    if args.calls != sorted(set(args.calls)):
        ap.error(f"--calls must be increasing and distinct, got {args.calls}")
    if not 0 < args.target_p95 <= 60:
        ap.error(f"--target-p95 must be in (0, 60] s, got {args.target_p95}")
    if not 5 <= args.max_audio_s <= 300:
        ap.error(f"--max-audio-s must be between 5 and 300, got {args.max_audio_s}")
    if not (
        args.device in ("cuda", "cpu")
        or (args.device.startswith("cuda:") and args.device[5:].isdigit())
    ):
        ap.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    args.compute_type = "float16" if args.device.startswith("cuda") else "float32"
    if not 30 <= args.budget_s <= 3600:
        ap.error(f"--budget-s must be between 30 and 3600, got {args.budget_s}")
    if not (args.manifest / "manifest.tsv").is_file():
        ap.error(f"no manifest.tsv under {args.manifest} (the speech set; --manifest DIR)")
    return args


def plan(args: argparse.Namespace) -> list[str]:
    estimate = LOAD_ESTIMATE_S * (len(args.models) + 1) + sum(
        args.max_audio_s + RUN_OVERHEAD_S for _ in args.calls
    )
    lines = [
        f"device {args.device}, {args.compute_type}; budget {args.budget_s:.0f} s "
        f"(estimate {estimate:.0f} s)",
        *(f"load {m} and check its warm-up on {WARM_CLIP.name}" for m in args.models),
        f"bench_asr --model {args.bench_model} --device {args.device} "
        f"--compute-type {args.compute_type} "
        f"--calls {' '.join(map(str, args.calls))} --max-audio-s {args.max_audio_s:g} "
        "--no-offline",
        f"report the largest N with p95 final latency <= {args.target_p95:g} s"
        + (", GPU memory and utilisation" if args.device.startswith("cuda") else ""),
    ]
    return lines


def weights_status(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Whether each model's checkpoint is here (without fetching anything)."""
    from service.asr import catalogue, weights
    from service.asr.bundled import BUNDLED

    out = []
    for model in dict.fromkeys([*args.models, args.bench_model]):
        if model not in catalogue.NAMES:
            out.append((model, "path"))
        elif weights.cached_path(model, args.model_dir):
            out.append((model, "cached"))
        elif model in BUNDLED:
            out.append((model, "bundled (converted on load)"))
        else:
            out.append((model, "missing (downloaded on load: needs the network)"))
    return out


class GpuSampler:
    """nvidia-smi's utilisation and memory, sampled every 0.5 s while a run lasts."""

    def __init__(self, index: int) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen | None = None
        self._index = index

    def __enter__(self) -> GpuSampler:
        with contextlib.suppress(OSError):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self._index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "500",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(x) for x in line.split(","))
                if len(self.samples) < 100_000:
                    self.samples.append((util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def summary(self) -> str:
        if not self.samples:
            return "util n/a (no nvidia-smi)"
        utils = [u for u, _ in self.samples]
        return (
            f"util mean {sum(utils) / len(utils):.0f}% max {max(utils):.0f}%, "
            f"memory used max {max(m for _, m in self.samples):.0f} MiB"
        )


def warm_up_check(model: str, args: argparse.Namespace) -> tuple[bool, str]:
    """Load on CUDA in float16 (the engine warms itself); then the first real decode must cost
    about what later ones do, and transcribe the clip."""
    cuda = args.device.startswith("cuda")
    import jiwer
    import numpy as np
    import torch
    from whisper.normalizers import EnglishTextNormalizer

    from service.asr.engine import AsrEngine, Request
    from service.audio.wavfile import read_wav

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine = AsrEngine(model, args.model_dir, args.device, compute_type=args.compute_type)
    started = time.monotonic()
    engine.load()
    load_s = time.monotonic() - started
    audio = read_wav(WARM_CLIP).astype(np.float32) / 32768.0
    try:
        times, text = [], ""
        for _ in range(4):
            t = time.monotonic()
            (outcome,) = engine.decode_batch([Request("final", audio, "en", "transcribe", print)])
            if cuda:
                torch.cuda.synchronize()
            times.append(time.monotonic() - t)
            text = outcome.text or ""
        normalize = EnglishTextNormalizer()
        wer = jiwer.wer(normalize(WARM_REFERENCE), normalize(text))
        steady = sorted(times[1:])[1]
        ok = times[0] <= max(2 * steady, steady + 0.25) and wer <= 0.3
        ok &= engine.fp16 == cuda
        peak = (
            f"; peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
        )
        return ok, (
            f"{model}: loaded+warmed {load_s:.1f} s, first decode {times[0] * 1000:.0f} ms, "
            f"then {steady * 1000:.0f} ms; WER {wer:.1%}{peak}; "
            f"{'ok' if ok else 'FAILED'} ({engine.compute_type})"
        )
    finally:
        engine.close()


def bench(args: argparse.Namespace, deadline: float) -> tuple[list[dict], int | None]:
    import bench_asr
    import torch

    from service.asr.engine import AsrEngine
    from service.asr.segmenter import SegmenterConfig

    clips = bench_asr.load_clips(args.manifest, ["en"], None)
    if not clips:
        raise SystemExit(f"bench_gpu: no English clips under {args.manifest}")
    cuda = args.device.startswith("cuda")
    engine = AsrEngine(
        args.bench_model, args.model_dir, args.device, compute_type=args.compute_type
    )
    engine.load()
    run_args = argparse.Namespace(
        max_audio_s=args.max_audio_s,
        language=None,
        partial_interval_s=1.0,
        prompt_chars=200,
        speed=1.0,
        no_early_finals=False,
    )
    config = SegmenterConfig()
    index = int(args.device.partition(":")[2] or 0)
    results, best = [], None
    print(
        f"{'N':>3} {'finals':>6} {'p50_s':>6} {'p95_s':>6} {'max_s':>6} {'util':>5} "
        f"{'batch':>5} {'WER':>6}  GPU"
    )
    try:
        for n in args.calls:
            if time.monotonic() + args.max_audio_s + RUN_OVERHEAD_S > deadline:
                print(f"{n:>3} skipped: the budget ({args.budget_s:.0f} s) would be exceeded")
                break
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with GpuSampler(index) if cuda else contextlib.nullcontext() as gpu:
                r = bench_asr.run(engine, run_args, clips, n, config)
            device = (
                f"{gpu.summary()}, torch peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                if cuda
                else "cpu"
            )
            results.append(r)
            print(
                f"{n:>3} {r['finals']:>6} {r['lat_p50']:>6.2f} {r['lat_p95']:>6.2f} "
                f"{r['lat_max']:>6.2f} {r['util']:>5.0%} {r['mean_batch']:>5.1f} "
                f"{r['wer']:>6.1%}  {device}",
                flush=True,
            )
            if r["lat_p95"] <= args.target_p95:
                best = n
    finally:
        engine.close()
    return results, best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    print("bench_gpu plan:")
    for line in plan(args):
        print(f"  - {line}")
    for model, status in weights_status(args):
        print(f"  weights {model}: {status}")
    if args.dry_run:
        print("dry run: nothing loaded")
        return 0
    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(
                "bench_gpu: no CUDA device (torch sees none); --dry-run checks the plan",
                file=sys.stderr,
            )
            return 3
        index = int(args.device.partition(":")[2] or 0)
        print(f"GPU {index}: {torch.cuda.get_device_name(index)}, torch {torch.__version__}")
    from service.asr.weights import WeightsError

    failed = False
    try:
        for model in args.models:
            ok, line = warm_up_check(model, args)
            print(line, flush=True)
            failed |= not ok
        _, best = bench(args, deadline)
    except WeightsError as e:
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 4
    verdict = (
        f"largest N with p95 <= {args.target_p95:g} s: {best}"
        if best is not None
        else f"no N kept p95 within {args.target_p95:g} s"
    )
    print(
        f"{verdict} ({args.bench_model}, {args.compute_type} on {args.device}, "
        f"{time.monotonic() - started:.0f} s in all)"
    )
    return 4 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
