"""The model catalogue against openai-whisper's own tables, the settings that name a model, the
`--list` table, and the memory check that refuses, at start, a model that cannot fit."""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from helpers import ROOT
from model_folders import ct2_folder
from whisper.model import AudioEncoder, TextDecoder

from service.asr import catalogue, memory
from service.config import ConfigError, load_settings

OFFICIAL = [
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
]  # fmt: skip


def test_every_official_name_is_known_with_openai_whispers_url_and_heads() -> None:
    assert sorted(catalogue.NAMES) == sorted(OFFICIAL) == sorted(whisper._MODELS)
    for name in OFFICIAL:
        info = catalogue.lookup(name)
        assert info.url() == whisper._MODELS[name], name
        d = info.dims
        mask = np.frombuffer(
            gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool
        ).reshape(d["n_text_layer"], d["n_text_head"])  # the size check is the dims check
        assert [tuple(int(i) for i in x) for x in np.argwhere(mask)] == list(info.alignment_heads)


@pytest.mark.parametrize(
    ("name", "file", "width", "layers", "text_layers", "n_mels", "n_vocab", "languages"),
    [
        ("tiny.en", "tiny.en.pt", 384, 4, 4, 80, 51864, 1),
        ("base", "base.pt", 512, 6, 6, 80, 51865, 99),
        ("small", "small.pt", 768, 12, 12, 80, 51865, 99),
        ("medium.en", "medium.en.pt", 1024, 24, 24, 80, 51864, 1),
        ("large-v2", "large-v2.pt", 1280, 32, 32, 80, 51865, 99),
        ("large", "large-v3.pt", 1280, 32, 32, 128, 51866, 100),
        ("turbo", "large-v3-turbo.pt", 1280, 32, 4, 128, 51866, 100),
    ],
)
def test_names_resolve_to_their_dimensions_and_file(
    name, file, width, layers, text_layers, n_mels, n_vocab, languages
) -> None:
    info = catalogue.lookup(name)
    d = info.dims
    assert info.file == file
    assert (d["n_audio_state"], d["n_audio_layer"], d["n_text_layer"]) == (
        width,
        layers,
        text_layers,
    )
    assert (d["n_mels"], d["n_vocab"], d["n_audio_ctx"], d["n_text_ctx"]) == (
        n_mels,
        n_vocab,
        1500,
        448,
    )
    assert info.n_languages == languages
    assert info.url().endswith(f"/{info.sha256}/{file}")


@pytest.mark.parametrize("name", [n for n in OFFICIAL if n not in catalogue.ALIASES])
def test_parameter_counts_match_a_real_whisper(name: str) -> None:
    d = catalogue.lookup(name).dims
    with torch.device("meta"):
        enc = AudioEncoder(
            d["n_mels"], d["n_audio_ctx"], d["n_audio_state"], d["n_audio_head"], d["n_audio_layer"]
        )
        dec = TextDecoder(
            d["n_vocab"], d["n_text_ctx"], d["n_text_state"], d["n_text_head"], d["n_text_layer"]
        )
    tensors = [*enc.state_dict().values(), *dec.state_dict().values()]
    assert catalogue.parameter_count(d) == sum(t.numel() for t in tensors)
    linear = sum(
        m.weight.numel() for m in [*enc.modules(), *dec.modules()] if type(m).__name__ == "Linear"
    )
    assert catalogue.linear_parameter_count(d) == linear


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError) as e:
        catalogue.lookup("large-v4")
    assert str(e.value) == (
        "unknown model 'large-v4': the official names are " + ", ".join(catalogue.NAMES)
    )


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OFFICIAL)
def test_every_official_name_is_a_valid_im_model(name: str) -> None:
    assert load_settings({"IM_MODEL": name}).model == name


def test_im_model_accepts_checkpoints_and_model_folders(tmp_path: Path) -> None:
    pt = tmp_path / "mine.pt"
    pt.write_bytes(b"x")
    assert load_settings({"IM_MODEL": str(pt)}).model == str(pt)
    folder = ct2_folder("tiny.en", tmp_path)
    assert load_settings({"IM_MODEL": str(folder)}).model == str(folder.resolve())
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert load_settings({"IM_MODEL": str(hf)}).model == str(hf)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("large-v4", "IM_MODEL must be one of tiny.en, tiny, .*large-v3-turbo, turbo, or the path"),
        ("/no/such/model.pt", "does not exist"),
        ("./models/x", "does not exist"),
        ("EMPTY_DIR", "neither a CTranslate2 model folder"),
    ],
)
def test_im_model_refuses_what_no_source_can_read(tmp_path: Path, value: str, message: str) -> None:
    if value == "EMPTY_DIR":
        value = str(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_settings({"IM_MODEL": value})


def test_compute_type_and_download_base_settings() -> None:
    s = load_settings({})
    assert s.compute_type == "auto" and s.model_download_base == catalogue.DOWNLOAD_BASE
    for value in ("auto", "float32", "int8", "float16"):
        assert load_settings({"IM_COMPUTE_TYPE": value}).compute_type == value
    with pytest.raises(ConfigError, match="IM_COMPUTE_TYPE must be one of auto, float32"):
        load_settings({"IM_COMPUTE_TYPE": "int4"})
    s = load_settings({"IM_MODEL_DOWNLOAD_BASE": "http://mirror.example/whisper/"})
    assert s.model_download_base == "http://mirror.example/whisper"
    with pytest.raises(ConfigError, match="IM_MODEL_DOWNLOAD_BASE must be an http"):
        load_settings({"IM_MODEL_DOWNLOAD_BASE": "ftp://x"})


# --- --list -----------------------------------------------------------------------------------


def test_list_shows_every_model_what_is_here_and_its_needs(tmp_path: Path) -> None:
    (tmp_path / "small.en.pt").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IM_MODEL_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "service.asr.weights", "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    for name in OFFICIAL:
        assert name in rows, out
    assert rows["small.en"][4] == "cached" and rows["small"][4] == "-"
    assert rows["tiny.en"][4] == "bundled" and rows["base"][4] == "bundled"
    assert rows["large"][1:3] == ["=", "large-v3"]
    assert rows["large-v3"][1:4] == ["1543", "100", "3087"]
    assert float(rows["large-v3"][5]) > float(rows["large-v3"][6])  # int8 needs less
    assert rows["medium.en"][2] == "en"
    assert str(tmp_path) in out


# --- memory -----------------------------------------------------------------------------------


def test_memory_estimates_grow_with_model_batch_and_precision() -> None:
    tiny, large = catalogue.lookup("tiny.en").dims, catalogue.lookup("large-v3").dims
    assert memory.weight_bytes(large, "float32") == 4 * catalogue.lookup("large-v3").parameters
    assert memory.weight_bytes(large, "float16") * 2 == memory.weight_bytes(large, "float32")
    assert memory.weight_bytes(large, "int8") < 0.8 * memory.weight_bytes(large, "float32")
    one = memory.estimate(large, "float16", "cuda", 1)
    sixteen = memory.estimate(large, "float16", "cuda", 16)
    assert sixteen.working > 10 * (one.working - memory.RUNTIME_ALLOWANCE)
    # large-v3 at a batch of 16 in float16 fits a 16 GB card, not an 8 GB one.
    assert 8e9 < sixteen.device_total < 16e9
    assert memory.estimate(tiny, "float32", "cpu", 1).device_total < 1 << 30
    int8 = memory.estimate(large, "int8", "cpu", 1)
    assert int8.host_peak == memory.weight_bytes(large, "float32")  # built in float32 first


def test_a_model_that_cannot_fit_is_refused_with_both_figures() -> None:
    dims = catalogue.lookup("large-v3").dims
    gib = 1 << 30
    with pytest.raises(memory.InsufficientMemory) as e:
        memory.check(
            "large-v3", dims, "float16", "cuda:0", 16, available={"device": (6 * gib, 8 * gib)}
        )
    msg = str(e.value)
    assert "needs about 9.6 GiB (weights 2.9 GiB + working memory for 16 utterances" in msg
    assert "cuda:0 has 6.0 GiB available of 8.0 GiB" in msg
    assert "IM_ASR_MAX_BATCH" in msg
    # The same model at one utterance at a time fits; the host must still hold the float32 build.
    assert memory.check(
        "large-v3",
        dims,
        "float16",
        "cuda:0",
        1,
        available={"device": (6 * gib, 8 * gib), "host": (16 * gib, 32 * gib)},
    )
    with pytest.raises(memory.InsufficientMemory, match=r"host has 4.0 GiB available of 8.0"):
        memory.check(
            "large-v3",
            dims,
            "float16",
            "cuda:0",
            1,
            available={"device": (6 * gib, 8 * gib), "host": (4 * gib, 8 * gib)},
        )
    with pytest.raises(memory.InsufficientMemory, match="IM_COMPUTE_TYPE=int8"):
        memory.check(
            "large-v3", dims, "float32", "cpu", 1, available={"device": (4 * gib, 8 * gib)}
        )


def test_host_memory_is_what_the_system_says() -> None:
    available, total = memory.host_memory()
    meminfo = dict(
        (line.split(":")[0], int(line.split()[1]) * 1024)
        for line in Path("/proc/meminfo").read_text().splitlines()
    )
    assert 0 < available <= total <= meminfo["MemTotal"]


# --- the container ----------------------------------------------------------------------------


def test_container_bakes_official_names_and_compose_runs_large_v3_turbo() -> None:
    """The Dockerfile's default IM_MODELS and compose.yaml's (build arg and IM_MODEL) are names
    the weights CLI accepts; scripts/check-container validates the files themselves."""
    import re

    dockerfile = (ROOT / "Dockerfile").read_text()
    compose = (ROOT / "compose.yaml").read_text()
    (baked,) = re.findall(r'^ARG IM_MODELS="([^"]*)"$', dockerfile, re.M)
    assert baked.split() == ["tiny.en", "base"]  # what the pinned packages carry: no network
    assert "python -m service.asr.weights --model-dir /opt/intellimeet/models" in dockerfile
    (compose_baked,) = re.findall(r"IM_MODELS: \$\{IM_MODELS:-([^}]*)\}", compose)
    (compose_model,) = re.findall(r"IM_MODEL: \$\{IM_MODEL:-([^}]*)\}", compose)
    assert "large-v3-turbo" in compose_baked.split() and compose_model == "large-v3-turbo"
    for name in [*baked.split(), *compose_baked.split(), compose_model]:
        assert name in catalogue.NAMES


def test_engine_refuses_at_start_before_any_download(tmp_path: Path) -> None:
    """The engine checks the real figures of this host before fetching: large-v3 decoding 256
    utterances at once on a CPU needs far more memory than any CI machine has."""
    from service.asr.engine import AsrEngine

    engine = AsrEngine("large-v3", tmp_path, "cpu", max_batch=256, download_base="http://x.invalid")
    with pytest.raises(memory.InsufficientMemory) as e:
        engine.load()
    engine.close()
    _, total = memory.host_memory()
    msg = str(e.value)
    assert "model large-v3 as float32 on cpu needs about" in msg
    assert f"of {total / memory.GIB:.1f} GiB" in msg and "256 utterances at once" in msg
    assert list(tmp_path.iterdir()) == []  # refused before the download was tried
