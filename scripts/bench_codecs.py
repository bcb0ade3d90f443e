"""Per-frame cost of the call codecs on real speech: encode, decode, PLC and FEC, in µs.

    .venv/bin/python scripts/bench_codecs.py [CLIP.wav ...]

Defaults to the speech set's JFK clip (IM_SPEECH_DIR or ../shared/data/speech). Prints the
median and 99th percentile per 20 ms frame, and the bitrate measured from payload bytes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.audio.codecs import OpusDecoder, OpusEncoder, make_decoder, make_encoder  # noqa: E402
from service.audio.wavfile import read_wav  # noqa: E402
from service.frames import FRAME_SAMPLES  # noqa: E402


def timed(fn, items) -> tuple[list, np.ndarray]:
    out, times = [], []
    for item in items:
        t = time.perf_counter()
        out.append(fn(item))
        times.append(time.perf_counter() - t)
    return out, np.array(times) * 1e6


def line(label: str, us: np.ndarray, extra: str = "") -> None:
    print(f"{label:<34} p50 {np.median(us):7.1f} µs   p99 {np.percentile(us, 99):7.1f} µs  {extra}")


def main(paths: list[str]) -> None:
    speech = Path(os.environ.get("IM_SPEECH_DIR") or ROOT.parent / "shared/data/speech")
    clips = [Path(p) for p in paths] or [speech / "en_jfk_inaugural_1961.wav"]
    pcm = np.concatenate([read_wav(p) for p in clips])
    frames = list(pcm[: pcm.size // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES))
    seconds = len(frames) * FRAME_SAMPLES / 16000
    print(f"{len(frames)} frames ({seconds:.1f} s) from {', '.join(p.name for p in clips)}")
    enc, dec = make_encoder("pcm16"), make_decoder("pcm16")
    packets, us = timed(enc.encode, frames)
    line("pcm16 encode", us)
    _, us = timed(dec.decode, packets)
    line("pcm16 decode", us)
    for bitrate in (16_000, 20_000, 24_000):
        for frame_ms in (20, 10):
            enc = OpusEncoder(bitrate=bitrate, frame_ms=frame_ms)
            packets, us = timed(enc.encode, frames)
            kbps = sum(len(p) for p in packets) * 8 / seconds / 1000
            line(f"opus {bitrate // 1000}k {frame_ms} ms encode", us, f"{kbps:.1f} kbit/s")
            dec = OpusDecoder()
            _, us = timed(dec.decode, packets)
            line(f"opus {bitrate // 1000}k {frame_ms} ms decode", us)
    dec = OpusDecoder()
    _, us = timed(lambda _: dec.conceal(), range(200))
    line("opus PLC frame", us)
    _, us = timed(lambda p: dec.conceal(p), packets[:200])
    line("opus FEC frame", us)


if __name__ == "__main__":
    main(sys.argv[1:])
