"""Two call nodes on loopback, a real speech clip as one side's microphone, and both
nodes' transcripts printed at the end. Run through `scripts/demo` (which sets up first)."""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from service.localnodes import NodeProcess, start_call, wait_for_final_transcripts

HERE = Path(__file__).resolve().parent
DEFAULT_CLIP = HERE / "data" / "en_jfk_inaugural_1961.wav"


def reference_for(clip: Path) -> str | None:
    manifest = clip.parent / "manifest.tsv"
    if not manifest.is_file():
        return None
    with manifest.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["file"] == clip.name:
                return row["reference_text"]
    return None


def wer(reference: str, hypothesis: str) -> float | None:
    try:
        import jiwer
        from whisper.normalizers import EnglishTextNormalizer
    except ImportError:
        return None
    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="WAV played as B's mic")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directory")
    args = parser.parse_args()
    clip = args.clip.resolve()

    work = Path(tempfile.mkdtemp(prefix="intellimeet-demo-"))
    models = (HERE.parent / "data" / "models").resolve()
    a = NodeProcess("A", work / "a", model_dir=models)
    b = NodeProcess("B", work / "b", model_dir=models)
    print(f"starting node A ({a.url}) and node B ({b.url}); data in {work}")
    try:
        a.start()
        b.start()
        heard = a.media_dir / "heard.wav"
        call_a, call_b = start_call(
            a,
            b,
            listen={"input": "silence", "output": f"file:{heard.name}"},
            dial={"input": b.media(clip), "output": None},
        )
        print(f"A listens on {call_a['address']}; B dialed and is connected")
        print(f"B's microphone plays {clip.name} in real time ...")
        t0 = time.monotonic()
        done = wait_for_final_transcripts(b, call_b["id"], a, call_a["id"])
        print(
            f"clip finished; transcripts settled {time.monotonic() - t0:.1f} s after the call began"
        )

        for title, node, call in (("B (speaker)", b, call_b), ("A (listener)", a, call_a)):
            print(f"\n--- node {title}: GET /sessions/{call['id']}/transcript?format=text")
            print(node.call("GET", f"/sessions/{call['id']}/transcript?format=text").rstrip())

        ended = b.call("DELETE", f"/sessions/{call_b['id']}")
        time.sleep(0.3)
        peer_view = a.call("GET", f"/sessions/{call_a['id']}")
        print(
            f"\nB hung up: B {ended['state']} ({ended['end_reason']}), "
            f"A {peer_view['state']} ({peer_view['end_reason']})"
        )
        stats = peer_view["stats"]
        print(
            f"A received {stats['frames_received']} frames ({stats['bytes_received']} bytes); "
            f"recording of what A heard: {heard}"
        )

        print("\nseconds from the end of the clip to its last segment readable from the API:")
        print(f"  node B (its own speech, local):  {done['speaker_latency_s']:.2f} s")
        print(f"  node A (the peer's speech, remote): {done['peer_latency_s']:.2f} s")
        reference = reference_for(clip)
        if reference:
            for name, segs in (("B", done["speaker_segments"]), ("A", done["peer_segments"])):
                score = wer(reference, " ".join(s["text"] for s in segs))
                if score is not None:
                    print(f"  WER of node {name}'s transcript against the reference: {score:.3f}")
        ok = bool(done["speaker_segments"]) and len(done["speaker_segments"]) == len(
            done["peer_segments"]
        )
        return 0 if ok else 1
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for node in (a, b):
            print(f"--- {node.name} log:\n{node.log_tail()}", file=sys.stderr)
        return 1
    finally:
        a.stop()
        b.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
