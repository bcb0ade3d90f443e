"""IM_COMPUTE_TYPE on a CPU: int8 (torch dynamic quantization) through the node's own engine
transcribes English dev clips within 1 point of float32's WER; the float16 weight cast keeps
the model's output (checked on the CPU, where torch runs float16 too, slowly); combinations a
device cannot run are refused at load, before any weights are read.

The full comparison (speed and WER on every English dev clip, streamed) is a benchmark:
`scripts/bench_asr --compute-type int8` against `--compute-type float32`
(docs/benchmarks.md).
"""

from __future__ import annotations

import csv

import jiwer
import numpy as np
import pytest
import torch
import whisper
from helpers import JFK_CLIP, reference
from whisper.normalizers import EnglishTextNormalizer

from service.asr import precision
from service.asr.engine import AsrEngine, Request
from service.asr.weights import load_model
from service.audio.wavfile import read_wav


def english_clips(speech_dir, every: int = 2) -> list[str]:
    """Every other English dev clip of at most 30 s (one window each), in manifest order: a
    fixed half of the set, about 70 s and 180 words."""
    with open(speech_dir / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    short = [r["file"] for r in rows if r["language"] == "en" and float(r["duration_s"]) <= 30]
    return short[::every]


def transcripts(model_dir, speech_dir, compute_type: str, clips: list[str]) -> list[str]:
    engine = AsrEngine("tiny.en", model_dir, "cpu", max_batch=1, compute_type=compute_type)
    engine.load()
    try:
        assert engine.compute_type == compute_type and not engine.fp16
        texts = []
        for name in clips:
            pcm = read_wav(speech_dir / name).astype(np.float32) / 32768.0
            (outcome,) = engine.decode_batch([Request("final", pcm, "en", "transcribe", print)])
            texts.append(outcome.text or "")
        return texts
    finally:
        engine.close()


@pytest.mark.slow
def test_int8_is_within_one_point_of_float32_wer(model_dir, speech_dir) -> None:
    normalize = EnglishTextNormalizer()
    clips = english_clips(speech_dir)
    refs = [normalize(reference(speech_dir, name)) for name in clips]
    assert len(clips) >= 15 and sum(len(r.split()) for r in refs) >= 150
    wer = {}
    for compute_type in ("float32", "int8"):
        hyps = [normalize(t) for t in transcripts(model_dir, speech_dir, compute_type, clips)]
        wer[compute_type] = jiwer.wer(refs, hyps)
    print(f"WER on {len(clips)} clips: {wer}")
    assert wer["int8"] <= wer["float32"] + 0.01, wer
    assert wer["float32"] < 0.15, wer


def test_int8_quantizes_the_encoders_linear_layers(model_dir) -> None:
    model = load_model("tiny.en", model_dir, "cpu", "int8")

    def linears(part) -> list[str]:
        return [type(m).__module__ for m in part.modules() if type(m).__name__ == "Linear"]

    assert linears(model.encoder) == ["torch.ao.nn.quantized.dynamic.modules.linear"] * 4 * 6
    assert linears(model.decoder) == ["whisper.model"] * 4 * 10
    assert model.encoder.blocks[0].mlp[0].weight().qscheme() == torch.per_channel_affine


def test_float16_weights_keep_the_output(model_dir) -> None:
    """The CUDA path's weight cast, run on the CPU: float16 everywhere but the LayerNorms,
    output within float16 rounding of float32, and the same greedy text."""
    mel = whisper.log_mel_spectrogram(
        whisper.pad_or_trim(read_wav(JFK_CLIP).astype(np.float32) / 32768.0)
    ).unsqueeze(0)
    reference_model = load_model("tiny.en", model_dir, "cpu", "float32")
    model = load_model("tiny.en", model_dir, "cpu", "float32")
    precision.half_weights(model)
    dtypes = {
        type(m).__name__: {p.dtype for p in m.parameters(recurse=False)}
        for m in model.modules()
        if list(m.parameters(recurse=False))
    }
    assert dtypes["LayerNorm"] == {torch.float32}
    assert dtypes["Linear"] == dtypes["Conv1d"] == dtypes["Embedding"] == {torch.float16}
    with torch.no_grad():
        want = reference_model.embed_audio(mel)
        got = model.embed_audio(mel.half())
    assert got.dtype == torch.float16
    assert float((got.float() - want).norm() / want.norm()) < 5e-3
    opts = {"language": "en", "without_timestamps": True}
    text32 = whisper.decode(reference_model, mel, whisper.DecodingOptions(fp16=False, **opts))
    text16 = whisper.decode(model, mel.half(), whisper.DecodingOptions(fp16=True, **opts))
    assert text16[0].text == text32[0].text


def test_a_cpu_model_keeps_its_output_projection_contiguous_and_its_logits(model_dir) -> None:
    """The decoder multiplies by the token embedding's transpose for every token; on a CPU
    that matrix is stored contiguous (precision.output_rows_contiguous), with the logits of
    the row-major layout Whisper loads."""
    model = load_model("tiny.en", model_dir, "cpu", "float32")
    weight = model.decoder.token_embedding.weight
    assert weight.t().is_contiguous()
    audio = torch.randn(1, model.dims.n_audio_ctx, model.dims.n_audio_state)
    tokens = torch.tensor([[50257, 50362, 440, 1049]])  # <|startoftranscript|> ... " The"
    with torch.no_grad():
        got = model.decoder(tokens, audio)
        model.decoder.token_embedding.weight = torch.nn.Parameter(weight.detach().contiguous())
        want = model.decoder(tokens, audio)
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [
        ("auto", "cpu", precision.CPU_AUTO),
        ("auto", "cuda", "float16"),
        ("auto", "cuda:1", "float16"),
        ("float32", "cuda", "float32"),
        ("int8", "cpu", "int8"),
    ],
)
def test_resolve(requested: str, device: str, expected: str) -> None:
    assert precision.resolve(requested, device) == expected


@pytest.mark.parametrize(
    ("requested", "device", "message"),
    [("float16", "cpu", "needs a CUDA device"), ("int8", "cuda", "is for CPUs")],
)
def test_engine_refuses_what_the_device_cannot_run(
    tmp_path, requested: str, device: str, message: str
) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        with pytest.raises(precision.PrecisionError, match=message):
            precision.resolve(requested, device)
        return
    engine = AsrEngine("tiny.en", tmp_path, device, compute_type=requested)
    with pytest.raises(precision.PrecisionError, match=message):
        engine.load()
    engine.close()
    assert list(tmp_path.iterdir()) == []  # refused before any weights were touched
