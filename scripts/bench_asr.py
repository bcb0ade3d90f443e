"""Live transcription benchmark: N simulated calls through the code path a call uses.

Each simulated call feeds clips from a manifest (laid out like ../shared/data/speech) as
20 ms frames at real-time pace (or --speed times faster) into its own StreamTranscriber,
all sharing one AsrEngine, exactly as calls on a node do; no sound device is involved. Per
run it prints final latency (end of speech to final committed), partial cadence, real-time
factor, worker utilisation, WER/CER against the references (Whisper's normalisers) and, for
comparison, the offline WER/CER of `whisper.transcribe` on the same clips with the same model.

    scripts/bench_asr --model tiny.en --calls 1
    scripts/bench_asr --model tiny.en --calls 4 8 --max-audio-s 60 [--sequential]
    scripts/bench_asr --model base --languages de es fr
    scripts/bench_asr --model tiny.en --calls 1 --compute-type int8   (against float32)

A manifest with a ``condition`` column (the voices set, scripts/build_voices) is run one
condition at a time, each with a fresh stream, and prints one line per condition: streaming
WER, offline WER on the same clips with the same model, their ratio, p50/p95 final latency:

    scripts/bench_asr --manifest /work/data/voices/manifest.tsv [--conditions clean whisper]
        [--sample 12] [--offline-cache /work/data/voices/offline.tsv]

``--silence [MINUTES]`` streams MINUTES (default 10) of each noise type alone, with nobody
speaking, and prints the words that reached a final or a partial (each must be 0).

``--with-pass [MODEL]`` runs a post-call pass beside the live calls the whole time, as a node
does after a call ends: the node's LongFormTranscriber (MODEL, default the live one, word
timings on) over the clips back to back, again and again, giving way to live decoding as
it does on a node. The live latency figures are then those of captions while a pass runs;
the pass's own progress is printed after the table:

    scripts/bench_asr --model tiny.en --calls 1 --max-audio-s 120 --no-offline
    scripts/bench_asr --model tiny.en --calls 1 --max-audio-s 120 --no-offline --with-pass
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.asr.engine import AsrEngine
from service.asr.segmenter import SegmenterConfig, Utterance
from service.asr.stream import StreamTranscriber
from service.audio.wavfile import read_wav
from service.frames import FRAME_SAMPLES, SAMPLE_RATE
from service.vocab import Segment, Task

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT.parent / "shared/data/speech"
GAP_S = 1.0  # silence between clips, as between turns of a conversation
SILENCE_SPEED = 20.0  # --silence feeds this much faster than real time unless --speed says
SILENCE_BABBLE_TALKERS = 8


@dataclass
class Clip:
    file: str
    language: str
    reference: str
    pcm: np.ndarray
    condition: str = ""  # the voices set's condition; "" for the dev set


@dataclass
class Placed:
    clip: Clip
    start_s: float  # where it starts in the call's stream
    end_s: float


@dataclass
class SimCall:
    """One simulated call, and what the benchmark records of it from the stream's callbacks
    (the stream itself keeps nothing per utterance)."""

    index: int
    placed: list[Placed]
    stream: StreamTranscriber | None = None
    finals: list[Segment] = field(default_factory=list)
    started: float = 0.0
    speech_end_s: dict[int, float] = field(default_factory=dict)  # utterance -> stream s
    final_at: dict[int, float] = field(default_factory=dict)  # utterance -> monotonic s
    partial_at: list[tuple[int, float]] = field(default_factory=list)  # (utterance, monotonic)
    partial_words: int = 0

    def ended(self, no: int, utt: Utterance) -> None:
        self.speech_end_s[no] = utt.speech_end_s if utt.speech_end_s is not None else utt.end_s

    def final(self, no: int, segments: list[Segment]) -> None:
        self.final_at[no] = time.monotonic()
        self.finals.extend(segments)

    def partial(self, no: int, text: str, start: float, end: float) -> None:
        self.partial_at.append((no, time.monotonic()))
        self.partial_words += len(text.split())


def manifest_file(manifest: Path) -> Path:
    """--manifest names the folder or its manifest.tsv."""
    return manifest if manifest.suffix == ".tsv" else manifest / "manifest.tsv"


def load_clips(
    manifest: Path,
    languages: list[str],
    limit: int | None,
    conditions: list[str] | None = None,
    sample: int | None = None,
    max_clip_s: float | None = None,
) -> list[Clip]:
    """The manifest's clips in `languages` (and `conditions`, if it has them); `sample`
    keeps that many per condition, spread evenly over its list."""
    path = manifest_file(manifest)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r["language"] in languages]
    if conditions:
        rows = [r for r in rows if r.get("condition", "") in conditions]
    if max_clip_s:
        rows = [r for r in rows if float(r["duration_s"]) <= max_clip_s]
    if sample:
        kept = []
        for cond in dict.fromkeys(r.get("condition", "") for r in rows):
            mine = [r for r in rows if r.get("condition", "") == cond]
            at = np.unique(np.linspace(0, len(mine) - 1, min(sample, len(mine))).round())
            kept += [mine[int(i)] for i in at]
        rows = kept
    clips = [
        Clip(
            r["file"],
            r["language"],
            r["reference_text"],
            read_wav(path.parent / r["file"]),
            r.get("condition", ""),
        )
        for r in rows
    ]
    return clips[:limit] if limit else clips


def normaliser(language: str) -> Callable[[str], str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()


_DIGITS = re.compile(r"\d+")


def digits_apart(text: str) -> str:
    """Normalised text with every digit a word of its own.

    Whisper's English normaliser joins a spoken digit string into one word ("one zero zero
    one eight" -> "10018") and spells a lone 1 as "one"; a decode that writes the same digits
    in groups ("1001. 8", "1-0-0-1-8") would then score one error per group against a
    reference of one word, and the WER of a 15-digit clip swings by 10 words on how the
    digits happen to be grouped. Apart, each digit is scored as the word it was spoken as.
    """
    words = [d for w in text.split() for d in (list(w) if _DIGITS.fullmatch(w) else [w])]
    for i, w in enumerate(words):
        near = words[max(0, i - 1) : i] + words[i + 1 : i + 2]
        if w == "one" and any(n.isdigit() for n in near):
            words[i] = "1"
    return " ".join(words)


def scores(pairs: list[tuple[str, str, str]]) -> tuple[float, float]:
    """Corpus WER and CER over (language, reference, hypothesis), normalised per language,
    digits scored one by one (`digits_apart`)."""
    import jiwer

    refs, hyps = [], []
    for language, ref, hyp in pairs:
        norm = normaliser(language)
        r, h = digits_apart(norm(ref).strip()), digits_apart(norm(hyp).strip())
        if language in ("zh", "ja"):  # no spaces: score characters as words
            r, h = " ".join(r.replace(" ", "")), " ".join(h.replace(" ", ""))
        refs.append(r or "<empty>")
        hyps.append(h)
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


def attach_stream(
    call: SimCall,
    engine: AsrEngine,
    config: SegmenterConfig,
    label: str,
    args: argparse.Namespace | None = None,
) -> StreamTranscriber:
    """Give `call` the stream a call's speaker gets, reporting into `call`'s records;
    `args`: this script's options (language, partial interval, prompt), else the node's
    defaults."""
    options: dict[str, Any] = {}
    if args is not None:
        options = {
            "language": args.language,
            "partial_interval_s": args.partial_interval_s,
            "prompt_chars": args.prompt_chars,
            "early_finals": not args.no_early_finals,
        }
    call.stream = StreamTranscriber(
        engine,
        config,
        on_final=call.final,
        on_partial=call.partial,
        task=Task.TRANSCRIBE,
        label=label,
        on_utterance=call.ended,
        **options,
    )
    return call.stream


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def play(call: SimCall, speed: float, t0: float) -> None:
    """Feed the call's whole stream frame by frame at the paced wall time."""
    assert call.stream is not None
    total = call.placed[-1].end_s + GAP_S
    pcm = np.zeros(round(total * SAMPLE_RATE), dtype=np.int16)
    for p in call.placed:
        at = round(p.start_s * SAMPLE_RATE)
        pcm[at : at + p.clip.pcm.size] = p.clip.pcm
    call.started = t0
    feed(call.stream, pcm, speed, t0)


def feed(stream: StreamTranscriber, pcm: np.ndarray, speed: float, t0: float | None = None) -> None:
    """Push `pcm` frame by frame at `speed` times real time from `t0`, then flush."""
    t0 = time.monotonic() if t0 is None else t0
    step = FRAME_SAMPLES / SAMPLE_RATE / speed
    for i in range(pcm.size // FRAME_SAMPLES):
        stream.push(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        delay = t0 + (i + 1) * step - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        elif i % 50 == 0:
            gevent.sleep(0)  # behind schedule: still let results and other calls run
    stream.flush()


def layout(clips: list[Clip], offset: int, max_audio_s: float | None) -> list[Placed]:
    """This call's clips, starting `offset` into the list so concurrent calls differ."""
    placed: list[Placed] = []
    t = GAP_S
    order = clips[offset % len(clips) :] + clips[: offset % len(clips)]
    for clip in order:
        dur = clip.pcm.size / SAMPLE_RATE
        if max_audio_s and placed and t + dur > max_audio_s:
            continue  # a shorter clip further on may still fit
        placed.append(Placed(clip, t, t + dur))
        t += dur + GAP_S
    return placed


def run(
    engine: AsrEngine,
    args: argparse.Namespace,
    clips: list[Clip],
    n: int,
    config: SegmenterConfig,
) -> dict[str, Any]:
    calls = [SimCall(i, layout(clips, i * 7, args.max_audio_s)) for i in range(n)]
    for call in calls:
        attach_stream(call, engine, config, f"sim call {call.index}", args)
    engine.reset_stats()
    t0 = time.monotonic() + 0.1
    started = time.monotonic()
    gevent.joinall([gevent.spawn(play, c, args.speed, t0) for c in calls])
    for c in calls:
        assert c.stream is not None
        # A loaded CPU can fall far behind; a final still owed would count as words lost.
        c.stream.idle.wait(120 + 2 * sum(p.end_s - p.start_s for p in c.placed))
    wall = time.monotonic() - started
    busy = engine.stats["busy_s"]

    latencies, cadence = [], []
    pairs = []
    detected_ok = detected_n = 0
    for c in calls:
        for no, at in c.final_at.items():
            latencies.append(at - (c.started + c.speech_end_s[no] / args.speed))
        by_utt: dict[int, list[float]] = {}
        for no, at in c.partial_at:
            by_utt.setdefault(no, []).append(at)
        for times in by_utt.values():
            cadence.extend(np.diff(times).tolist())
        for p in c.placed:
            segs = [f for f in c.finals if p.start_s - 0.5 <= f.start < p.end_s + GAP_S / 2]
            pairs.append((p.clip.language, p.clip.reference, " ".join(f.text for f in segs)))
            for f in segs:
                detected_n += 1
                detected_ok += f.language == p.clip.language
    audio_s = sum(p.end_s - p.start_s for c in calls for p in c.placed)
    wer, cer = scores(pairs)
    stats = engine.stats
    return {
        "N": n,
        "audio_s": audio_s,
        "wall_s": wall,
        "finals": len(latencies),
        "lat_p50": pct(latencies, 50),
        "lat_p95": pct(latencies, 95),
        "lat_max": max(latencies, default=float("nan")),
        "partials": sum(len(c.partial_at) for c in calls),
        "cadence_p50": pct(cadence, 50),
        "rtf": busy / max(1e-9, audio_s),
        "util": busy / max(1e-9, wall),
        "mean_batch": stats["batch_items"] / max(1, stats["batches"]),
        "wer": wer,
        "cer": cer,
        "lang_ok": f"{detected_ok}/{detected_n}",
        "throughput": audio_s / wall,
        "drops": {
            k: v for k, v in stats.items() if (k.startswith(("dropped_", "partials_"))) and v
        },
        "pairs": pairs,
        "used": {p.clip.file for c in calls for p in c.placed},
    }


class OfflineCache:
    """Offline hypotheses by (model, file), kept in a TSV between runs: they do not change
    when the live path does, and they cost as much as the streaming run itself."""

    def __init__(self, path: Path | None, model: str) -> None:
        self.path, self.model = path, model
        self.texts: dict[tuple[str, str], str] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                m, file, text = [*line.split("\t"), "", ""][:3]
                self.texts[(m, file)] = text

    @staticmethod
    def key(clip: Clip) -> str:
        """The file and a checksum of its samples: a rebuilt clip is decoded again."""
        return f"{clip.file}#{zlib.crc32(clip.pcm.tobytes()):08x}"

    def get(self, file: str) -> str | None:
        return self.texts.get((self.model, file))

    def put(self, file: str, text: str) -> None:
        text = " ".join(text.split())
        self.texts[(self.model, file)] = text
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{self.model}\t{file}\t{text}\n")


def offline(
    engine: AsrEngine, clips: list[Clip], language: str | None, cache: OfflineCache | None = None
) -> tuple[float, float]:
    import whisper

    pairs = []
    for clip in clips:
        text = cache.get(cache.key(clip)) if cache else None
        if text is None:
            audio = clip.pcm.astype(np.float32) / 32768.0
            lang = "en" if not engine.multilingual else language
            result = whisper.transcribe(
                engine.model, audio, language=lang, fp16=engine.fp16, verbose=None
            )
            text = result["text"]
            if cache:
                cache.put(cache.key(clip), text)
        pairs.append((clip.language, clip.reference, text))
    return scores(pairs)


def by_condition(
    engine: AsrEngine,
    args: argparse.Namespace,
    clips: list[Clip],
    config: SegmenterConfig,
    cache: OfflineCache,
) -> None:
    """One line per condition of the voices set: each condition streamed on its own."""
    n = args.calls[0]
    print(
        f"{'condition':<12} {'clips':>5} {'audio_s':>7} {'stream':>7} {'offline':>7} "
        f"{'ratio':>5} {'p50_s':>6} {'p95_s':>6} {'finals':>6}"
    )
    totals: list[tuple[float, float]] = []
    for cond in dict.fromkeys(c.condition for c in clips):
        mine = [c for c in clips if c.condition == cond]
        r = run(engine, args, mine, n, config)
        streamed = [c for c in mine if c.file in r["used"]]
        off = (
            float("nan") if args.no_offline else offline(engine, streamed, args.language, cache)[0]
        )
        ratio = r["wer"] / off if off > 0 else (1.0 if r["wer"] == 0 else float("inf"))
        totals.append((r["wer"], off))
        print(
            f"{cond:<12} {len(streamed):>5} {r['audio_s']:>7.0f} {r['wer']:>7.1%} {off:>7.1%} "
            f"{ratio:>5.2f} {r['lat_p50']:>6.2f} {r['lat_p95']:>6.2f} {r['finals']:>6}"
            + (f"   drops {r['drops']}" if r["drops"] else ""),
            flush=True,
        )
        if args.show:
            for language, ref, hyp in r["pairs"]:
                print(f"    [{language}] REF {ref}\n         HYP {hyp}")
    worst = max((s / o for s, o in totals if o == o and o > 0), default=float("nan"))
    print(
        f"stream/offline: WER of the streaming path over offline whisper.transcribe; worst "
        f"ratio {worst:.2f}; p50/p95: end of speech -> final committed (s), "
        f"fed at x{args.speed:g}"
    )


def noise_types(rng: np.random.Generator, n: int, voices: list[np.ndarray]) -> dict[str, Any]:
    """Makers of each --silence noise, `n` samples long (made one at a time: 10 minutes of
    float64 is 77 MB)."""
    from build_voices import at_level, babble, brown, hum, line_noise, white

    def chatter() -> np.ndarray:
        return at_level(babble(rng, voices, n, SILENCE_BABBLE_TALKERS), -45.0)

    return {
        "silence": lambda: np.zeros(n),
        "white_-60dB": lambda: white(rng, n, -60.0),
        "white_-40dB": lambda: white(rng, n, -40.0),
        "white_-20dB": lambda: white(rng, n, -20.0),
        "brown_-30dB": lambda: brown(rng, n, -30.0),
        "hum50_-30dB": lambda: hum(rng, n, -30.0),
        f"babble{SILENCE_BABBLE_TALKERS}_-45dB": chatter,
        "line_noise": lambda: line_noise(rng, n),
    }


def silence(engine: AsrEngine, args: argparse.Namespace, config: SegmenterConfig) -> int:
    """Stream each noise alone through a call's path; every word that comes out is wrong."""
    from build_voices import SEED, load_sources

    n = int(args.silence * 60 * SAMPLE_RATE)
    voices = [s.pcm for s in load_sources(manifest_file(args.manifest).parent, ["en"])]
    voices = [v for v in voices if v.size < 30 * SAMPLE_RATE]
    speed = args.speed if args.speed > 1 else SILENCE_SPEED
    print(f"{'noise':<16} {'min':>4} {'utts':>5} {'decodes':>7} {'dropped':>7} {'words':>5}")
    total = 0
    for name, make in noise_types(np.random.default_rng(SEED), n, voices).items():
        if args.noises and name not in args.noises:
            make()  # still drawn: each noise is the same whichever are run
            continue
        pcm = np.clip(np.round(make()), -32768, 32767).astype(np.int16)
        call = SimCall(0, [])
        attach_stream(call, engine, config, f"noise {name}", args)
        stream = call.stream
        assert stream is not None
        engine.reset_stats()
        feed(stream, pcm, speed)
        stream.idle.wait(300)
        stats = engine.stats
        words = call.partial_words + sum(len(f.text.split()) for f in call.finals)
        total += words
        print(
            f"{name:<16} {args.silence:>4g} {len(call.speech_end_s):>5} "
            f"{int(stats['finals'] + stats['partials']):>7} "
            f"{stream.finals_dropped:>7} {words:>5}",
            flush=True,
        )
    print(
        f"utts: utterances the segmenter opened (went to the model as finals); decodes: finals "
        f"and partials decoded; dropped: finals the filters rejected; words: in finals and "
        f"partials (must be 0). Fed at x{speed:g}. Total words: {total}"
    )
    return 1 if total else 0


class BesidePass:
    """A post-call pass running beside the live calls (``--with-pass``): the node's own
    LongFormTranscriber over the clips back to back, from a greenlet, over and over."""

    def __init__(
        self,
        engine: AsrEngine,
        args: argparse.Namespace,
        clips: list[Clip],
        config: SegmenterConfig,
    ) -> None:
        from service.asr.longform import LongFormTranscriber

        gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.int16)
        pcm = np.concatenate([x for c in clips[:12] for x in (c.pcm, gap)])
        self.audio = pcm.astype(np.float32) / 32768.0
        self.transcriber = LongFormTranscriber(
            args.with_pass or args.model,
            args.model_dir,
            args.device,
            args.compute_type,
            "",
            busy=lambda: engine.pending > 0,
            make_vad=config.make_vad,
        )
        t = time.monotonic()
        self.transcriber.prepare()
        print(
            f"pass beside the calls: {self.transcriber.model_name}, loaded in "
            f"{time.monotonic() - t:.1f} s, over {self.audio.size / SAMPLE_RATE:.0f} s of clips"
        )
        self.passes = 0
        self.share = 0.0
        self.started = time.monotonic()
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        from service.vocab import Task

        def progress(share: float) -> None:
            self.share = share

        while True:
            self.transcriber.transcribe(self.audio, "en", Task.TRANSCRIBE, progress)
            self.passes += 1
            self.share = 0.0

    def reset(self) -> None:
        self.passes, self.started = 0, time.monotonic()
        self.transcriber.waited_s = 0.0

    def report(self) -> str:
        wall = time.monotonic() - self.started
        done = (self.passes + self.share) * self.audio.size / SAMPLE_RATE
        return (
            f"pass beside: {done:.0f} s of audio transcribed in {wall:.0f} s "
            f"({done / wall:.2f}x real time), {self.transcriber.waited_s:.0f} s given way"
        )

    def close(self) -> None:
        self._greenlet.kill(block=False)
        self.transcriber.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/bench_asr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "data/models")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--compute-type",
        default="auto",
        choices=["auto", "float32", "int8", "float16"],
        help="as IM_COMPUTE_TYPE: auto is float16 on CUDA, float32 on a CPU; int8 is CPU only",
    )
    ap.add_argument("--calls", type=int, nargs="+", default=[1], help="N (several: one run each)")
    ap.add_argument("--sequential", action="store_true", help="decode one at a time")
    ap.add_argument(
        "--max-batch", type=int, default=0, help="as IM_ASR_MAX_BATCH; 0: 16 on CUDA, 1 on CPU"
    )
    ap.add_argument("--languages", nargs="+", default=["en"], help="clip languages to use")
    ap.add_argument("--language", default=None, help="language given to Whisper (default: detect)")
    ap.add_argument("--speed", type=float, default=1.0, help="feed N times faster than real time")
    ap.add_argument("--max-audio-s", type=float, default=None, help="stream length per call")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--partial-interval-s", type=float, default=1.0)
    ap.add_argument(
        "--prompt-chars", type=int, default=200, help="committed text given as context; 0: none"
    )
    ap.add_argument("--vad", default="silero", choices=["silero", "webrtc"])
    ap.add_argument(
        "--end-silence-ms", type=int, default=500, help="silence that ends an utterance"
    )
    ap.add_argument(
        "--no-early-finals",
        action="store_true",
        help="decode a final only once its utterance has ended (StreamTranscriber.early_finals)",
    )
    ap.add_argument(
        "--short-context",
        action="store_true",
        help="as IM_ASR_SHORT_CONTEXT=1: on a CPU, short audio over its own length "
        "(service/asr/encoding.py)",
    )
    ap.add_argument("--no-offline", action="store_true", help="skip the offline comparison")
    ap.add_argument("--show", action="store_true", help="print each clip's hypothesis")
    ap.add_argument("--conditions", nargs="+", default=None, help="voices set: only these")
    ap.add_argument("--sample", type=int, default=None, help="voices set: N clips per condition")
    ap.add_argument("--max-clip-s", type=float, default=None, help="skip longer clips")
    ap.add_argument(
        "--offline-cache", type=Path, default=None, help="TSV keeping offline hypotheses"
    )
    ap.add_argument(
        "--silence",
        type=float,
        nargs="?",
        const=10.0,
        default=None,
        metavar="MINUTES",
        help="stream MINUTES (default 10) of each noise alone; print the words (must be 0)",
    )
    ap.add_argument("--noises", nargs="+", default=None, help="--silence: only these noises")
    ap.add_argument(
        "--with-pass",
        nargs="?",
        const="",
        default=None,
        metavar="MODEL",
        help="a post-call pass (MODEL, default --model) runs beside the calls the whole time",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    clips = load_clips(
        args.manifest, args.languages, args.limit, args.conditions, args.sample, args.max_clip_s
    )
    if not clips and args.silence is None:
        ap.error(f"no clips in {args.languages} under {args.manifest}")
    engine = AsrEngine(
        args.model,
        args.model_dir,
        args.device,
        args.max_batch,
        sequential=args.sequential,
        compute_type=args.compute_type,
        short_context=args.short_context,
    )
    t = time.monotonic()
    engine.load()
    print(
        f"model {args.model} on {engine.device} ({engine.compute_type}), "
        f"{'sequential' if args.sequential else f'batched (max {engine.max_batch})'}, "
        f"{'short' if engine.short_context else 'full'} context, "
        f"loaded+warmed in {time.monotonic() - t:.1f} s; {len(clips)} clips "
        f"({sum(c.pcm.size for c in clips) / SAMPLE_RATE:.0f} s) in {' '.join(args.languages)}; "
        f"speed x{args.speed:g}; VAD {args.vad}, end silence {args.end_silence_ms} ms; "
        f"prompt {args.prompt_chars} chars"
    )
    config = SegmenterConfig(vad=args.vad, end_silence_ms=args.end_silence_ms)
    if args.silence is not None:
        rc = silence(engine, args, config)
        engine.close()
        return rc
    if any(c.condition for c in clips):
        by_condition(engine, args, clips, config, OfflineCache(args.offline_cache, args.model))
        engine.close()
        return 0
    head = (
        f"{'N':>3} {'audio_s':>7} {'finals':>6} {'p50_s':>6} {'p95_s':>6} {'max_s':>6} "
        f"{'partials':>8} {'cad_s':>5} {'RTF':>5} {'util':>5} {'batch':>5} {'xRT':>5} "
        f"{'WER':>6} {'CER':>6} {'lang':>7}"
    )
    print(head)
    beside = BesidePass(engine, args, clips, config) if args.with_pass is not None else None
    used: set[str] = set()
    for n in args.calls:
        if beside is not None:
            beside.reset()
        r = run(engine, args, clips, n, config)
        used |= r["used"]
        print(
            f"{r['N']:>3} {r['audio_s']:>7.0f} {r['finals']:>6} {r['lat_p50']:>6.2f} "
            f"{r['lat_p95']:>6.2f} {r['lat_max']:>6.2f} {r['partials']:>8} "
            f"{r['cadence_p50']:>5.2f} {r['rtf']:>5.2f} {r['util']:>5.0%} "
            f"{r['mean_batch']:>5.1f} {r['throughput']:>5.1f} {r['wer']:>6.1%} "
            f"{r['cer']:>6.1%} {r['lang_ok']:>7}   drops {r['drops'] or '-'}"
        )
        if args.show:
            for language, ref, hyp in r["pairs"]:
                print(f"    [{language}] REF {ref}\n         HYP {hyp}")
        if beside is not None:
            print(f"    {beside.report()}")
    print(
        "p50/p95/max: end of speech -> final committed (s); cad: median s between partials; "
        "RTF: worker busy s / audio s; util: worker busy share of wall time; batch: mean "
        "items per batch; xRT: audio s streamed per wall s; lang: finals in the clip's language"
    )
    if beside is not None:
        beside.close()
    if not args.no_offline:
        streamed = [c for c in clips if c.file in used]
        cache = OfflineCache(args.offline_cache, args.model)
        wer, cer = offline(engine, streamed, args.language, cache)
        print(
            f"offline whisper.transcribe, same model, the {len(streamed)} clips streamed: "
            f"WER {wer:.1%}  CER {cer:.1%}"
        )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
