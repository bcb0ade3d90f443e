"""CTranslate2 and Hugging Face folders converted into openai-whisper checkpoints, and checked
the way the bundled conversion is: against the source (CTranslate2's own run of the folder,
or the original weights) on real speech, encoder output and greedy tokens, then a
transcription scored against the reference.

No mocks: the int8 folders are written by CTranslate2's own quantizer and serializer, the
safetensors files by the safetensors library, and the reference runs are CTranslate2's.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import whisper
from helpers import JFK_CLIP, reference
from model_folders import ct2_folder, hf_folder, quantized_ct2_folder
from test_weights import read_wav
from whisper.normalizers import EnglishTextNormalizer

from service.asr import converters
from service.asr.checkpoint import read_checkpoint
from service.asr.weights import WeightsError, checkpoint_path, load_model

pytestmark = pytest.mark.slow  # every test here converts and loads a real model

JFK = "en_jfk_inaugural_1961.wav"


@pytest.fixture(scope="module")
def jfk_mel() -> torch.Tensor:
    audio = whisper.pad_or_trim(read_wav(JFK_CLIP))
    return whisper.log_mel_spectrogram(audio).unsqueeze(0)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundled tiny.en conversion: what every tiny.en folder must convert into."""
    path = checkpoint_path("tiny.en", tmp_path_factory.mktemp("ref"))
    return torch.load(path, map_location="cpu", weights_only=True)


def greedy_tokens(model: whisper.model.Whisper, mel: torch.Tensor) -> list[int]:
    opts = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True)
    return list(whisper.decode(model, mel, opts)[0].tokens)


def ct2_reference(folder: Path, mel: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """CTranslate2's own float32 run of the folder: encoder output and greedy tokens."""
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
    encoded = np.array(model.encode(features))
    tokenizer = whisper.tokenizer.get_tokenizer(False)
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    result = model.generate(features, [prompt], beam_size=1, max_length=448)
    tokens = result[0].sequences_ids[0]
    if tokens[: len(prompt)] == prompt:
        tokens = tokens[len(prompt) :]
    return encoded, [t for t in tokens if t != tokenizer.eot]


def transcribe_wer(model: whisper.model.Whisper, speech_dir: Path) -> tuple[float, str]:
    result = model.transcribe(read_wav(JFK_CLIP), language="en", fp16=False, temperature=0.0)
    normalize = EnglishTextNormalizer()
    ref = normalize(reference(speech_dir, JFK))
    return jiwer.wer(ref, normalize(result["text"])), result["text"]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- CTranslate2 -------------------------------------------------------------------------------


def test_bundled_tiny_en_folder_converts_to_the_bundled_checkpoint(
    tmp_path: Path, tiny_reference: dict
) -> None:
    folder = ct2_folder("tiny.en", tmp_path)
    path = checkpoint_path(str(folder), tmp_path / "models")
    assert path.parent == tmp_path / "models" and path.name.startswith("model-")
    got = read_checkpoint(path)
    assert got["dims"] == tiny_reference["dims"]
    assert got["alignment_heads"] == [tuple(h) for h in tiny_reference["alignment_heads"]]
    for name, tensor in tiny_reference["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][name], tensor), name
    # Converted once: the second call finds the cached file.
    before = path.stat().st_mtime_ns
    assert checkpoint_path(str(folder), tmp_path / "models") == path
    assert path.stat().st_mtime_ns == before


@pytest.mark.slow
def test_bundled_base_folder_converts_to_the_bundled_checkpoint(tmp_path: Path) -> None:
    folder = ct2_folder("base", tmp_path)
    got = read_checkpoint(checkpoint_path(str(folder), tmp_path / "models"))
    want = read_checkpoint(checkpoint_path("base", tmp_path / "ref"))
    assert got["dims"] == want["dims"] and got["dims"]["n_vocab"] == 51865
    for name, tensor in want["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][name], tensor), name


@pytest.mark.parametrize("quantization", ["int8", "int8_float16", "int16"])
def test_quantized_ct2_folder_matches_ctranslate2_and_transcribes(
    tmp_path: Path, jfk_mel: torch.Tensor, speech_dir: Path, quantization: str
) -> None:
    folder = quantized_ct2_folder(ct2_folder("tiny.en", tmp_path), tmp_path / "q", quantization)
    raw = (folder / "model.bin").read_bytes()
    assert b"weight_scale" in raw  # really quantized, by CTranslate2

    model = load_model(str(folder), tmp_path / "models", "cpu")
    assert model.dims.n_vocab == 51864
    # CTranslate2 computing in float32 restores the int8 rows exactly as the converter does,
    # so the two runs differ only by float rounding.
    ref_encoded, ref_tokens = ct2_reference(folder, jfk_mel)
    with torch.no_grad():
        encoded = model.embed_audio(jfk_mel).numpy()
    assert rel(encoded, ref_encoded) < 1e-4
    assert greedy_tokens(model, jfk_mel) == ref_tokens

    wer, text = transcribe_wer(model, speech_dir)
    assert wer <= 0.15, f"WER {wer:.3f}: {text!r}"


def test_float_ct2_folder_matches_ctranslate2(
    tmp_path: Path, jfk_mel: torch.Tensor, tiny_reference: dict
) -> None:
    folder = ct2_folder("tiny.en", tmp_path)
    model = load_model(str(folder), tmp_path / "models", "cpu")
    ref_encoded, ref_tokens = ct2_reference(folder, jfk_mel)
    with torch.no_grad():
        encoded = model.embed_audio(jfk_mel).numpy()
    assert rel(encoded, ref_encoded) < 1e-4
    assert greedy_tokens(model, jfk_mel) == ref_tokens


def test_ct2_folder_with_a_bad_scale_is_refused(tmp_path: Path) -> None:
    variables = {
        "encoder/conv1/weight": np.ones((4, 2, 3), dtype=np.int8),
        "encoder/conv1/weight_scale": np.ones(3, dtype=np.float32),  # one per row: 4 needed
    }
    with pytest.raises(WeightsError, match="shape"):
        converters.dequantize_ct2(variables)


# --- Hugging Face ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_hf_folder_converts_exactly_and_transcribes(
    tmp_path: Path,
    tiny_reference: dict,
    jfk_mel: torch.Tensor,
    speech_dir: Path,
    layout: str,
) -> None:
    folder = hf_folder(tiny_reference, tmp_path / "whisper-tiny.en", layout)
    assert converters.folder_kind(folder) == converters.HF
    path = checkpoint_path(str(folder), tmp_path / "models")
    got = read_checkpoint(path)
    assert got["dims"] == tiny_reference["dims"]
    assert got["alignment_heads"] == [tuple(h) for h in tiny_reference["alignment_heads"]]
    assert got["model_state_dict"].keys() == tiny_reference["model_state_dict"].keys()
    for name, tensor in tiny_reference["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][name], tensor), name

    # Against the source: the original weights, loaded the same way.
    model = load_model(str(folder), tmp_path / "models", "cpu")
    source = load_model("tiny.en", tmp_path / "ref", "cpu")
    with torch.no_grad():
        assert torch.equal(model.embed_audio(jfk_mel), source.embed_audio(jfk_mel))
    assert greedy_tokens(model, jfk_mel) == greedy_tokens(source, jfk_mel)
    assert torch.equal(model.alignment_heads.to_dense(), source.alignment_heads.to_dense())
    wer, text = transcribe_wer(model, speech_dir)
    assert wer <= 0.15, f"WER {wer:.3f}: {text!r}"


class _Exploit:
    """A pickle that would create a file when unpickled the unsafe way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hf_pickle_with_code_is_refused_and_never_run(tmp_path: Path, tiny_reference: dict) -> None:
    folder = hf_folder(tiny_reference, tmp_path / "hf", "bin")
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.encoder.conv1.weight": _Exploit(marker)}, f)
    with pytest.raises(WeightsError, match="weights_only=True"):
        checkpoint_path(str(folder), tmp_path / "models")
    assert not marker.exists()
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_hf_folder_of_another_model_is_refused(tmp_path: Path, tiny_reference: dict) -> None:
    folder = hf_folder(tiny_reference, tmp_path / "hf")
    config = (folder / "config.json").read_text().replace('"whisper"', '"bert"')
    (folder / "config.json").write_text(config)
    with pytest.raises(WeightsError, match="not 'whisper'"):
        checkpoint_path(str(folder), tmp_path / "models")


def test_hf_folder_with_missing_tensors_is_refused(tmp_path: Path, tiny_reference: dict) -> None:
    from safetensors.torch import load_file, save_file

    folder = hf_folder(tiny_reference, tmp_path / "hf")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.decoder.layers.3.fc2.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"missing \['decoder.blocks.3.mlp.2.weight'\]"):
        checkpoint_path(str(folder), tmp_path / "models")
    assert not list((tmp_path / "models").glob("*.pt"))


def test_folder_that_is_neither_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="neither a CTranslate2"):
        checkpoint_path(str(tmp_path), tmp_path / "models")
