"""Compare the voice activity detectors the segmenter can use (a benchmark, not a test).

    .venv/bin/python scripts/bench_vad.py [--manifest ../shared/data/speech]

For each VAD (and webrtcvad at each aggressiveness) it runs the real Segmenter over:
- every clip of the manifest with 1 s of silence either side, clean and with white noise at
  10 dB SNR: *speech recall* is the share of clearly voiced frames (RMS within 20 dB of the
  clip's loud frames) that end up inside an utterance, i.e. speech that reaches Whisper;
- 60 s each of digital silence, low and moderate white noise, brown noise and mains hum:
  *false triggers* are the utterances (and seconds) produced where nobody speaks;
- the CPU time per 20 ms frame.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.asr.segmenter import Segmenter, SegmenterConfig
from service.audio.wavfile import read_wav
from service.frames import FRAME_SAMPLES, SAMPLE_RATE

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "shared/data/speech"


def run(config: SegmenterConfig, pcm: np.ndarray) -> tuple[list, float]:
    seg = Segmenter(config)
    out = []
    frames = pcm.size // FRAME_SAMPLES
    t0 = time.process_time()
    for i in range(frames):
        u = seg.push(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        if u is not None:
            out.append(u)
    if (u := seg.flush()) is not None:
        out.append(u)
    return out, (time.process_time() - t0) / max(1, frames)


def voiced_frames(pcm: np.ndarray) -> np.ndarray:
    frames = pcm[: pcm.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.percentile(rms, 95)
    return rms >= loud * 0.1


def recall(utts: list, voiced: np.ndarray) -> float:
    covered = np.zeros(voiced.size, dtype=bool)
    for u in utts:
        covered[round(u.start_s * 50) : round(u.end_s * 50)] = True
    return float((covered & voiced).sum() / max(1, voiced.sum()))


def noises(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = SAMPLE_RATE * 60
    t = np.arange(n) / SAMPLE_RATE
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(1601) / 1601, mode="same")  # keep it stationary
    brown *= 1500 / brown.std()
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)) * 800
    return {
        "silence": np.zeros(n),
        "white_low(sd200)": rng.normal(0, 200, n),
        "white_mid(sd1000)": rng.normal(0, 1000, n),
        "white_loud(sd4000)": rng.normal(0, 4000, n),
        "brown(sd1500)": brown,
        "hum50Hz+noise": hum + rng.normal(0, 100, n),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    args = ap.parse_args()
    with open(args.manifest / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = np.random.default_rng(1)
    pad = np.zeros(SAMPLE_RATE, dtype=np.int16)
    clips = [np.concatenate([pad, read_wav(args.manifest / r["file"]), pad]) for r in rows]
    noisy = []
    for c in clips:
        power = np.mean(c.astype(np.float64) ** 2) * c.size / max(1, np.count_nonzero(c))
        n = rng.normal(0, np.sqrt(power / 10), c.size)  # 10 dB SNR over the speech
        noisy.append(np.clip(c + n, -32768, 32767).astype(np.int16))
    noise = {k: np.clip(v, -32768, 32767).astype(np.int16) for k, v in noises(rng).items()}

    configs = {
        "silero(0.5)": SegmenterConfig(vad="silero", silero_threshold=0.5),
        **{f"webrtc(agg{a})": SegmenterConfig(vad="webrtc", aggressiveness=a) for a in (1, 2, 3)},
    }
    print(f"{len(clips)} clips, {sum(c.size for c in clips) / SAMPLE_RATE:.0f} s; noise 60 s each")
    header = ["vad", "recall_clean", "recall_10dB", "us/frame"] + [f"{k} utts/secs" for k in noise]
    print("\t".join(header))
    for name, config in configs.items():
        rec, rec_noisy, cpu = [], [], []
        for clean, dirty in zip(clips, noisy, strict=True):
            voiced = voiced_frames(clean)
            utts, per = run(config, clean)
            rec.append(recall(utts, voiced))
            cpu.append(per)
            utts, _ = run(config, dirty)
            rec_noisy.append(recall(utts, voiced))
        false = []
        for pcm in noise.values():
            utts, _ = run(config, pcm)
            false.append(f"{len(utts)}/{sum(u.end_s - u.start_s for u in utts):.1f}")
        print(
            "\t".join(
                [
                    name,
                    f"{np.mean(rec):.3f}",
                    f"{np.mean(rec_noisy):.3f}",
                    f"{np.mean(cpu) * 1e6:.0f}",
                    *false,
                ]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
