"""Build the *voices* set: the English dev clips under conditions a live call meets.

    scripts/build_voices [--source ../shared/data/speech] [--out /work/data/voices]

The dev clips are clean read speech at normal levels; live calls are not. Every English dev
clip is rewritten under each condition below (real speech always, never synthetic speech),
into ``<out>/<condition>/<file>``, with ``<out>/manifest.tsv`` laid out like the dev set's
(plus a ``condition`` column), so ``scripts/bench_asr --manifest <out>/manifest.tsv`` runs
on it unchanged and prints one line per condition. The output is derived data: it goes
outside the repository. Every random choice comes from a generator seeded with ``--seed``,
the clip's name and the condition, so a rebuild is bit-identical.

Levels are *active speech* RMS (ITU-T P.56 in spirit): the power of the 20 ms frames within
40 dB of the clip's loudest frame, so the pauses of a clip do not change its level.

| condition | what is done |
| --- | --- |
| clean | the clip as recorded |
| level_m20 / m35 / m50 | scaled to -20 / -35 / -50 dBFS active RMS (-20 clips a few peaks) |
| babble_10db / 5db | + babble: 6 other dev talkers (other sources), summed, at 10 / 5 dB SNR |
| brown_10db / 5db | + brown noise (integrated white noise, 1/f^2, drift removed) |
| hum_10db / 5db | + 50 Hz mains hum with harmonics 2-7 at 1/k amplitude, plus a -70 dBFS hiss |
| phone_band | to 8 kHz and back (soxr), band-passed 300-3400 Hz (windowed-sinc FIR) |
| opus_12k | through libopus at 12 kbit/s (VOIP, 20 ms frames; it picks its narrower band) |
| tempo_1.3 | 1.3x faster, pitch kept: ffmpeg ``atempo`` (WSOLA; sox is not installed) |
| reverb | convolved with a synthetic room response: direct sound, then exponentially |
|  | decaying white noise from 5 ms, RT60 0.6 s, direct-to-reverberant ratio 0 dB |
|  | (a talker a few metres from the microphone); level kept |
| whisper | voicing removed: per 32 ms frame (hop 16 ms, Hann) an order-18 LPC all-pole filter |
|  | (autocorrelation, Levinson-Durbin) is excited by white noise at the frame's LPC |
|  | residual energy instead of by the residual (filtered in the frequency domain, |
|  | overlap-add); then set to -50 dBFS active RMS: whispering is quiet (the
|  | whispered recordings of the issue were about -55 dBFS) |

SNR is speech active power over the noise's mean power. The noise functions are also what
``scripts/bench_asr --silence`` streams with no speech at all.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import wave
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.audio.wavfile import read_wav
from service.frames import FRAME_SAMPLES, SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared/data/speech"
DEFAULT_OUT = ROOT.parent / "data/voices"
SEED = 13
FULL_SCALE = 32768.0
BABBLE_TALKERS = 6
REVERB_RT60_S = 0.6
WHISPER_LPC_ORDER = 18
WHISPER_LEVEL_DBFS = -50.0
COLUMNS = ["file", "duration_s", "language", "reference_text", "source", "licence", "condition"]

Audio = np.ndarray  # float64 samples, full scale = 32768 (int16 units)


@dataclass(frozen=True)
class Source:
    file: str
    pcm: Audio
    row: dict[str, str]


# -- levels --------------------------------------------------------------------------------


def active_rms(x: Audio) -> float:
    """RMS of the 20 ms frames within 40 dB of the loudest one."""
    n = x.size // FRAME_SAMPLES * FRAME_SAMPLES
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    power = np.mean(x[:n].reshape(-1, FRAME_SAMPLES) ** 2, axis=1)
    active = power[power >= power.max() * 1e-4]
    return float(np.sqrt(active.mean())) if active.size else 0.0


def dbfs(rms: float) -> float:
    return 20 * np.log10(max(rms, 1e-9) / FULL_SCALE)


def at_level(x: Audio, level_dbfs: float) -> Audio:
    return x * (FULL_SCALE * 10 ** (level_dbfs / 20) / max(active_rms(x), 1e-9))


def mix_at_snr(speech: Audio, noise: Audio, snr_db: float) -> Audio:
    noise = noise[: speech.size]
    gain = active_rms(speech) / max(float(np.sqrt(np.mean(noise**2))), 1e-9) / 10 ** (snr_db / 20)
    return speech + noise * gain


def to_pcm(x: Audio) -> tuple[np.ndarray, int]:
    """int16 samples and how many had to be clipped."""
    clipped = int(np.count_nonzero(np.abs(x) > 32767))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16), clipped


# -- noises (also streamed alone by bench_asr --silence) -----------------------------------


def white(rng: np.random.Generator, n: int, level_dbfs: float) -> Audio:
    return rng.normal(0.0, FULL_SCALE * 10 ** (level_dbfs / 20), n)


def brown(rng: np.random.Generator, n: int, level_dbfs: float = -30.0) -> Audio:
    """Integrated white noise; a 0.1 s moving average is taken off so it does not drift."""
    x = np.cumsum(rng.normal(0, 1, n + 1600))
    x = (x - np.convolve(x, np.ones(1601) / 1601, mode="same"))[800 : 800 + n]
    return x * (FULL_SCALE * 10 ** (level_dbfs / 20) / max(float(x.std()), 1e-9))


def hum(rng: np.random.Generator, n: int, level_dbfs: float = -30.0) -> Audio:
    """50 Hz mains hum, harmonics 2-7 at 1/k, random phases, and a faint (-70 dBFS) hiss."""
    t = np.arange(n) / SAMPLE_RATE
    phases = rng.uniform(0, 2 * np.pi, 7)
    x = sum(np.sin(2 * np.pi * 50 * k * t + phases[k - 1]) / k for k in range(1, 8))
    x = np.asarray(x) * (FULL_SCALE * 10 ** (level_dbfs / 20) / float(np.std(x)))
    return x + white(rng, n, -70.0)


def band_pass(x: Audio, low_hz: float, high_hz: float, rate: int, taps: int = 511) -> Audio:
    """Windowed-sinc (Blackman) FIR band-pass, zero phase (same length out)."""
    m = np.arange(taps) - (taps - 1) / 2

    def low(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * m)

    h = (low(high_hz) - low(low_hz)) * np.blackman(taps)
    return fft_convolve(x, h)[(taps - 1) // 2 : (taps - 1) // 2 + x.size]


def line_noise(rng: np.random.Generator, n: int) -> Audio:
    """A bad phone line with nobody on it: band-limited hiss (-50 dBFS), a 50 Hz buzz
    (-45 dBFS) and crackle (a few sharp clicks a second, up to -20 dBFS peaks)."""
    x = band_pass(white(rng, n, -44.0), 300, 3400, SAMPLE_RATE)
    x += hum(rng, n, -45.0)
    clicks = np.zeros(n)
    at = rng.integers(0, n, size=max(1, n * 3 // SAMPLE_RATE))
    clicks[at] = rng.choice([-1, 1], at.size) * rng.uniform(0.02, 0.1, at.size) * FULL_SCALE
    decay = np.exp(-np.arange(48) / 6.0) * np.cos(np.arange(48) * 1.3)
    return x + np.convolve(clicks, decay, mode="same")


def babble(rng: np.random.Generator, voices: list[Audio], n: int, talkers: int) -> Audio:
    """`talkers` of `voices`, each at the same active level, looped from a random offset and
    summed: background chatter in which no one talker stands out."""
    picks = rng.choice(len(voices), size=talkers, replace=talkers > len(voices))
    out = np.zeros(n)
    for i in picks:
        v = at_level(voices[i], -30.0)
        start = int(rng.integers(0, v.size))
        out += np.resize(np.roll(v, -start), n)
    return out


# -- channels --------------------------------------------------------------------------------


def fft_convolve(x: Audio, h: np.ndarray) -> Audio:
    size = x.size + h.size - 1
    nfft = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:size]


def phone_band(x: Audio) -> Audio:
    import soxr

    narrow = soxr.resample(x, SAMPLE_RATE, 8000, quality="VHQ")
    narrow = band_pass(narrow, 300, 3400, 8000, taps=255)
    return soxr.resample(narrow, 8000, SAMPLE_RATE, quality="VHQ")[: x.size]


def opus(x: Audio, bitrate: int = 12_000) -> Audio:
    """Through libopus and back (VOIP, voice, 20 ms frames, complexity 10)."""
    import opuslib

    enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = bitrate
    enc.complexity = 10
    enc.signal = opuslib.SIGNAL_VOICE
    dec = opuslib.Decoder(SAMPLE_RATE, 1)
    pcm, _ = to_pcm(x)
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, dtype=np.int16)])
    out = [
        np.frombuffer(
            dec.decode(enc.encode(pcm[i : i + FRAME_SAMPLES].tobytes(), FRAME_SAMPLES), 320),
            dtype=np.int16,
        )
        for i in range(0, pcm.size, FRAME_SAMPLES)
    ]
    return np.concatenate(out).astype(np.float64)[: x.size]


def tempo(x: Audio, factor: float = 1.3) -> Audio:
    """Faster, same pitch: ffmpeg's atempo (WSOLA), deterministic."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is needed for the tempo condition (sox is not installed)")
    pcm, _ = to_pcm(x)
    raw_pcm = ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1"]
    raw = subprocess.run(
        [ffmpeg, "-v", "error", *raw_pcm, "-i", "-", "-af", f"atempo={factor}", *raw_pcm, "-"],
        input=pcm.tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.float64)


def room_response(rng: np.random.Generator, rt60_s: float = REVERB_RT60_S) -> np.ndarray:
    """Direct sound, then from 5 ms exponentially decaying white noise (-60 dB at rt60_s),
    scaled so the tail carries as much energy as the direct sound (DRR 0 dB)."""
    n = int(rt60_s * 1.2 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.normal(0, 1, n) * 10 ** (-3 * t / rt60_s)
    tail[: int(0.005 * SAMPLE_RATE)] = 0
    tail /= np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def reverb(x: Audio, rng: np.random.Generator) -> Audio:
    y = fft_convolve(x, room_response(rng))[: x.size]
    return y * (active_rms(x) / max(active_rms(y), 1e-9))


def lpc(frame: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """Levinson-Durbin on the frame's autocorrelation: ([1, a1..ap], residual energy)."""
    r = np.correlate(frame, frame, mode="full")[frame.size - 1 : frame.size + order]
    r[0] *= 1 + 1e-9  # white-noise correction: keeps silent frames well conditioned
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = float(r[0])
    if err <= 0:
        return a, 0.0
    for i in range(1, order + 1):
        k = -(r[i] + np.dot(a[1:i], r[i - 1 : 0 : -1])) / err
        a[1 : i + 1] = a[1 : i + 1] + k * np.concatenate([a[i - 1 : 0 : -1], [1.0]])
        err *= 1 - k * k
        if err <= 0:
            break
    return a, max(err, 0.0)


def whisper(x: Audio, rng: np.random.Generator, order: int = WHISPER_LPC_ORDER) -> Audio:
    """Noise-excited LPC resynthesis (see the module docstring)."""
    size, hop, nfft = 512, 256, 1024
    window = np.hanning(size + 1)[:size]  # periodic Hann: overlap-adds to 1 at hop size/2
    power = float(np.sum(window**2))
    padded = np.concatenate([np.zeros(size), x, np.zeros(size)])
    noise = rng.normal(0, 1, padded.size)
    out = np.zeros(padded.size + nfft)
    for start in range(0, padded.size - size + 1, hop):
        a, err = lpc(padded[start : start + size] * window, order)
        gain = np.sqrt(err / power)  # residual RMS per sample
        spectrum = np.fft.rfft(noise[start : start + size] * window, nfft)
        shaped = np.fft.irfft(spectrum * gain / np.fft.rfft(a, nfft), nfft)
        out[start : start + nfft] += shaped
    return at_level(out[size : size + x.size], WHISPER_LEVEL_DBFS)


# -- the set -------------------------------------------------------------------------------


Transform = Callable[[Audio, np.random.Generator, list[Audio]], Audio]


def conditions() -> dict[str, Transform]:
    """Name -> transform of one clip (float samples in int16 units), given its generator and
    the other talkers' clips (for babble)."""

    def noisy(make: Callable[[np.random.Generator, int], Audio], snr: float) -> Transform:
        return lambda x, rng, others: mix_at_snr(x, make(rng, x.size), snr)

    def chatter(snr: float) -> Transform:
        return lambda x, rng, others: mix_at_snr(
            x, babble(rng, others, x.size, BABBLE_TALKERS), snr
        )

    def scaled(level: float) -> Transform:
        return lambda x, rng, others: at_level(x, level)

    out: dict[str, Transform] = {"clean": lambda x, rng, others: x}
    for level in (20, 35, 50):
        out[f"level_m{level}"] = scaled(-level)
    for snr in (10, 5):
        out[f"babble_{snr}db"] = chatter(snr)
    for name, make in (("brown", brown), ("hum", hum)):
        for snr in (10, 5):
            out[f"{name}_{snr}db"] = noisy(make, snr)
    out["phone_band"] = lambda x, rng, others: phone_band(x)
    out["opus_12k"] = lambda x, rng, others: opus(x)
    out["tempo_1.3"] = lambda x, rng, others: tempo(x)
    out["reverb"] = lambda x, rng, others: reverb(x, rng)
    out["whisper"] = lambda x, rng, others: whisper(x, rng)
    return out


def generator(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def speaker_of(file: str) -> str:
    """Clips of one source share a talker: babble for a clip is made of other sources."""
    return "_".join(file.split("_")[:3])


def load_sources(source: Path, languages: list[str]) -> list[Source]:
    with open(source / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [
        Source(r["file"], read_wav(source / r["file"]).astype(np.float64), r)
        for r in rows
        if r["language"] in languages
    ]


def write_wav(path: Path, pcm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def build(source: Path, out: Path, seed: int, only: list[str] | None) -> int:
    sources = load_sources(source, ["en"])
    if not sources:
        raise SystemExit(f"no English clips in {source}/manifest.tsv")
    # Short clips for babble: the long recording would dominate any random pick.
    short = [s for s in sources if s.pcm.size < 30 * SAMPLE_RATE]
    table = conditions()
    names = only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown condition(s) {unknown}: use some of {list(table)}")
    rows = []
    for name in names:
        clipped = 0
        for s in sources:
            others = [o.pcm for o in short if speaker_of(o.file) != speaker_of(s.file)]
            pcm, n = to_pcm(table[name](s.pcm, generator(seed, name, s.file), others))
            clipped += n
            file = f"{name}/{s.file}"
            write_wav(out / file, pcm)
            rows.append(
                {
                    **s.row,
                    "file": file,
                    "duration_s": f"{pcm.size / SAMPLE_RATE:.2f}",
                    "source": f"{name} of {s.file} (scripts/build_voices, seed {seed})",
                    "condition": name,
                }
            )
        level = np.mean(
            [
                dbfs(active_rms(read_wav(out / r["file"]).astype(np.float64)))
                for r in rows[-len(sources) :]
            ]
        )
        print(f"{name:<12} {len(sources)} clips, mean active level {level:6.1f} dBFS, "
              f"{clipped} samples clipped")  # fmt: skip
    manifest = out / "manifest.tsv"
    if only and manifest.is_file():  # a partial rebuild keeps the other conditions' rows
        with open(manifest, encoding="utf-8", newline="") as f:
            old = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        order = list(dict.fromkeys([*(r["condition"] for r in old), *names]))
        rows = [r for r in old if r["condition"] not in names] + rows
        rows.sort(key=lambda r: order.index(r["condition"]))  # stable: clip order kept
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    print(f"{len(rows)} files, manifest {out / 'manifest.tsv'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/build_voices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the dev set's folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the set is written")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument(
        "--conditions", nargs="+", default=None, help="(re)build only these (default: all)"
    )
    args = ap.parse_args()
    if args.out.resolve().is_relative_to(ROOT):
        ap.error(f"--out {args.out} is inside the repository: the set is derived data")
    return build(args.source, args.out, args.seed, args.conditions)


if __name__ == "__main__":
    sys.exit(main())
