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
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
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


@dataclass
class Clip:
    file: str
    language: str
    reference: str
    pcm: np.ndarray


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

    def ended(self, no: int, utt: Utterance) -> None:
        self.speech_end_s[no] = utt.speech_end_s if utt.speech_end_s is not None else utt.end_s

    def final(self, no: int, segments: list[Segment]) -> None:
        self.final_at[no] = time.monotonic()
        self.finals.extend(segments)

    def partial(self, no: int, text: str, start: float, end: float) -> None:
        self.partial_at.append((no, time.monotonic()))


def load_clips(manifest: Path, languages: list[str], limit: int | None) -> list[Clip]:
    with open(manifest / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    clips = [
        Clip(r["file"], r["language"], r["reference_text"], read_wav(manifest / r["file"]))
        for r in rows
        if r["language"] in languages
    ]
    return clips[:limit] if limit else clips


def normaliser(language: str) -> Callable[[str], str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()


def scores(pairs: list[tuple[str, str, str]]) -> tuple[float, float]:
    """Corpus WER and CER over (language, reference, hypothesis), normalised per language."""
    import jiwer

    refs, hyps = [], []
    for language, ref, hyp in pairs:
        norm = normaliser(language)
        r, h = norm(ref).strip(), norm(hyp).strip()
        if language in ("zh", "ja"):  # no spaces: score characters as words
            r, h = " ".join(r.replace(" ", "")), " ".join(h.replace(" ", ""))
        refs.append(r or "<empty>")
        hyps.append(h)
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


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
    step = FRAME_SAMPLES / SAMPLE_RATE / speed
    for i in range(pcm.size // FRAME_SAMPLES):
        call.stream.push(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        delay = t0 + (i + 1) * step - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        elif i % 50 == 0:
            gevent.sleep(0)  # behind schedule: still let results and other calls run
    call.stream.flush()


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
        call.stream = StreamTranscriber(
            engine,
            config,
            on_final=call.final,
            on_partial=call.partial,
            language=args.language,
            task=Task.TRANSCRIBE,
            partial_interval_s=args.partial_interval_s,
            label=f"sim call {call.index}",
            prompt_chars=args.prompt_chars,
            on_utterance=call.ended,
        )
    engine.reset_stats()
    t0 = time.monotonic() + 0.1
    started = time.monotonic()
    gevent.joinall([gevent.spawn(play, c, args.speed, t0) for c in calls])
    for c in calls:
        assert c.stream is not None
        c.stream.idle.wait(120)
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
            k: v for k, v in stats.items() if (k.startswith(("dropped_", "partials_s"))) and v
        },
        "pairs": pairs,
        "used": {p.clip.file for c in calls for p in c.placed},
    }


def offline(engine: AsrEngine, clips: list[Clip], language: str | None) -> tuple[float, float]:
    import whisper

    pairs = []
    for clip in clips:
        audio = clip.pcm.astype(np.float32) / 32768.0
        lang = "en" if not engine.multilingual else language
        result = whisper.transcribe(
            engine.model, audio, language=lang, fp16=engine.fp16, verbose=None
        )
        pairs.append((clip.language, clip.reference, result["text"]))
    return scores(pairs)


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
    ap.add_argument("--no-offline", action="store_true", help="skip the offline comparison")
    ap.add_argument("--show", action="store_true", help="print each clip's hypothesis")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    clips = load_clips(args.manifest, args.languages, args.limit)
    if not clips:
        ap.error(f"no clips in {args.languages} under {args.manifest}")
    engine = AsrEngine(
        args.model,
        args.model_dir,
        args.device,
        args.max_batch,
        sequential=args.sequential,
        compute_type=args.compute_type,
    )
    t = time.monotonic()
    engine.load()
    print(
        f"model {args.model} on {engine.device} ({engine.compute_type}), "
        f"{'sequential' if args.sequential else f'batched (max {engine.max_batch})'}, "
        f"loaded+warmed in {time.monotonic() - t:.1f} s; {len(clips)} clips "
        f"({sum(c.pcm.size for c in clips) / SAMPLE_RATE:.0f} s) in {' '.join(args.languages)}; "
        f"speed x{args.speed:g}; VAD {args.vad}, end silence {args.end_silence_ms} ms; "
        f"prompt {args.prompt_chars} chars"
    )
    config = SegmenterConfig(vad=args.vad, end_silence_ms=args.end_silence_ms)
    head = (
        f"{'N':>3} {'audio_s':>7} {'finals':>6} {'p50_s':>6} {'p95_s':>6} {'max_s':>6} "
        f"{'partials':>8} {'cad_s':>5} {'RTF':>5} {'util':>5} {'batch':>5} {'xRT':>5} "
        f"{'WER':>6} {'CER':>6} {'lang':>7}"
    )
    print(head)
    used: set[str] = set()
    for n in args.calls:
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
    print(
        "p50/p95/max: end of speech -> final committed (s); cad: median s between partials; "
        "RTF: worker busy s / audio s; util: worker busy share of wall time; batch: mean "
        "items per batch; xRT: audio s streamed per wall s; lang: finals in the clip's language"
    )
    if not args.no_offline:
        streamed = [c for c in clips if c.file in used]
        wer, cer = offline(engine, streamed, args.language)
        print(
            f"offline whisper.transcribe, same model, the {len(streamed)} clips streamed: "
            f"WER {wer:.1%}  CER {cer:.1%}"
        )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
