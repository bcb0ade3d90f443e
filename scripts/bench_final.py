"""The transcript of record against the live one, through a real call.

Two node processes on loopback: B listens (silent), A dials and plays English dev clips
back to back (1 s between them) as its microphone. A's live pass (IM_MODEL, tiny.en)
captions them; when the speech is over A hangs up, and both nodes run their post-call
passes with ``--final-model``. The same speech is then transcribed three ways, each scored
against the clips' references (word error rate, Whisper's English normaliser):

- live: A's live revision (what the call captioned);
- final, lossless: A's final revision of its own side, from ``local.flac``;
- final, Opus: B's final revision of A's side, from ``remote.opus`` (the packets as B got
  them): the same pass on the same speech, through the codec.

    scripts/bench_final --final-model tiny.en base [--clips 12]

Prints one line per final model, with how long the passes took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_asr import GAP_S, load_clips
from whisper.normalizers import EnglishTextNormalizer

from service.audio.wavfile import read_wav
from service.frames import SAMPLE_RATE
from service.localnodes import NodeProcess, start_call

ROOT = Path(__file__).resolve().parents[1]
MAX_CLIP_S = 12.0


def speech(manifest_dir: Path, count: int, out: Path) -> str:
    """The first ``count`` English clips of at most MAX_CLIP_S (bench_asr's loader), with
    GAP_S between them, written to ``out``; their references joined."""
    clips = load_clips(manifest_dir, ["en"], count, max_clip_s=MAX_CLIP_S)
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.int16)
    pcm = np.concatenate([x for c in clips for x in (gap, c.pcm)])
    soundfile.write(out, np.concatenate([pcm, gap]), SAMPLE_RATE, subtype="PCM_16")
    return " ".join(c.reference for c in clips)


def wer(reference: str, hypothesis: str) -> float:
    norm = EnglishTextNormalizer()
    return float(jiwer.wer(norm(reference), norm(hypothesis)))


def text(node: NodeProcess, call_id: str, revision: str, speaker: str) -> str:
    body = node.call("GET", f"/sessions/{call_id}/transcript?revision={revision}")
    return " ".join(s["text"] for s in body["segments"] if s["speaker"] == speaker)


def wait_pass(node: NodeProcess, call_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = node.call("GET", f"/sessions/{call_id}").get("postcall")
        if p and p["state"] in ("done", "failed"):
            return p
        time.sleep(0.5)
    raise TimeoutError(f"node {node.name}: the pass of {call_id} did not finish in {timeout} s")


def one_run(
    final_model: str, wav: Path, duration_s: float, root: Path, model_dir: Path
) -> tuple[str, str, str, float]:
    """One call through two fresh nodes: A's live text, A's final text of its own side, B's
    final text of A's side, and how long the passes took (s)."""
    env = {"IM_FINAL_MODEL": final_model}
    a = NodeProcess("A", root / "a", env=env, model_dir=model_dir)
    b = NodeProcess("B", root / "b", env=env, model_dir=model_dir)
    try:
        a.start()
        b.start()
        listened, dialled = start_call(
            b,
            a,
            listen={"input": "silence", "output": None},
            dial={"input": a.media(wav), "output": None},
        )
        time.sleep(duration_s + 3.0)  # the speech, and its last finals
        a.call("DELETE", f"/sessions/{dialled['id']}")
        t = time.monotonic()
        passes = [wait_pass(n, c, 1800) for n, c in ((a, dialled["id"]), (b, listened["id"]))]
        took = time.monotonic() - t
        failed = [p for p in passes if p["state"] != "done"]
        if failed:
            raise RuntimeError(f"a pass failed: {failed}")
        return (
            text(a, dialled["id"], "live", "local"),
            text(a, dialled["id"], "final", "local"),
            text(b, listened["id"], "final", "remote"),
            took,
        )
    finally:
        a.stop()
        b.stop()


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_final", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--final-model", nargs="+", default=["tiny.en"])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--speech-dir", type=Path, default=ROOT.parent / "shared/data/speech")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "data/models")
    ap.add_argument("--show", action="store_true", help="print the reference and each text")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_final-") as tmp:
        wav = Path(tmp) / "speech.wav"
        reference = speech(args.speech_dir, args.clips, wav)
        duration_s = len(read_wav(wav)) / SAMPLE_RATE
        print(
            f"{args.clips} English dev clips, {duration_s:.0f} s, live model tiny.en; "
            f"WER against the references"
        )
        print(f"{'final model':<12} {'live':>6} {'final, lossless':>16} {'final, Opus':>12} passes")
        for model in args.final_model:
            live, flac, opus, took = one_run(
                model, wav, duration_s, Path(tmp) / model, args.model_dir
            )
            print(
                f"{model:<12} {wer(reference, live):>6.1%} {wer(reference, flac):>16.1%} "
                f"{wer(reference, opus):>12.1%} {took:.0f} s (both nodes at once)",
                flush=True,
            )
            if args.show:
                norm = EnglishTextNormalizer()
                for name, said in (
                    ("REF", reference),
                    ("live", live),
                    ("flac", flac),
                    ("opus", opus),
                ):
                    print(f"    {name:<5} {norm(said)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
