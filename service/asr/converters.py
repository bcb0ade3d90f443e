"""Model folders other tools write, converted into openai-whisper checkpoints.

Two layouts are read:

- **CTranslate2** (faster-whisper, ``ct2-transformers-converter``): ``model.bin`` +
  ``config.json``. Float32, float16 or bfloat16 weights, or quantized ones (int8, int8_float16,
  int8_float32, int8_bfloat16: int8 rows with a float32 ``weight_scale`` per row; int16: one
  scale per matrix). CTranslate2 quantizes a row as ``rint(w * 127 / max|w|)``, so a row is
  restored as ``q / scale``: the int8 rounding stays (at most half a step, 1/254 of the row's
  largest weight), nothing else is lost.
- **Hugging Face transformers** (``openai/whisper-*``): ``config.json`` (``model_type``
  ``whisper``) with ``model.safetensors``, a sharded ``model.safetensors.index.json``, or
  ``pytorch_model.bin``. Safetensors are read with the ``safetensors`` library (a header and raw
  arrays: nothing executes). A ``pytorch_model.bin`` is a pickle; it is opened only with
  ``torch.load(weights_only=True)``, which builds tensors and plain containers and refuses
  anything else, and the folder is refused if that fails.

Each converter returns the same checkpoint dict as `ct2.convert_ct2` (checked name by name
and shape by shape against a real Whisper before anything is cached) plus the alignment heads
the folder declares (CTranslate2 ``config.json``, transformers ``generation_config.json``).
Detection (`folder_kind`) only looks at file names, so the settings check can use it at start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.asr.checkpoint import WeightsError, check_against_whisper
from service.asr.ct2 import convert_ct2, dims_from_ct2, read_ct2

CT2 = "ctranslate2"
HF = "transformers"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MAX_CONFIG_BYTES = 1 << 20  # a config.json larger than this is not a model config


def folder_kind(folder: Path) -> str:
    """ "ctranslate2" or "transformers" for a model folder, from its file names alone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a directory")
    if (folder / "model.bin").is_file():
        return CT2
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in HF_WEIGHT_FILES):
        return HF
    raise WeightsError(
        f"{folder} is neither a CTranslate2 model folder (model.bin + config.json) nor a "
        f"Hugging Face Whisper folder (config.json + {' or '.join(HF_WEIGHT_FILES)})"
    )


def weight_files(folder: Path) -> list[Path]:
    """The files whose content the converted checkpoint depends on (its cache key)."""
    folder = Path(folder)
    if folder_kind(folder) == CT2:
        names = ["model.bin", "config.json"]
    else:
        names = ["config.json", "generation_config.json", *HF_WEIGHT_FILES]
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            names += sorted(set(_read_json(index).get("weight_map", {}).values()))
    return [folder / n for n in names if (folder / n).is_file()]


def convert_folder(folder: Path) -> dict:
    """A checkpoint dict ({"dims", "model_state_dict", "alignment_heads"}) from a folder."""
    folder = Path(folder)
    return convert_ct2_folder(folder) if folder_kind(folder) == CT2 else convert_hf_folder(folder)


# --------------------------------------------------------------------------------------------
# CTranslate2


def convert_ct2_folder(folder: Path) -> dict:
    variables = read_ct2(Path(folder) / "model.bin")
    variables = dequantize_ct2(variables)
    checkpoint = convert_ct2(variables, dims_from_ct2(variables))
    config = _read_json(Path(folder) / "config.json") if (folder / "config.json").is_file() else {}
    checkpoint["alignment_heads"] = _heads(config.get("alignment_heads"), checkpoint["dims"])
    return checkpoint


def dequantize_ct2(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Replace every quantized ``X/weight`` + ``X/weight_scale`` pair by float weights.

    Restored weights take the dtype of the model's other floating weights (float16 for
    int8_float16, float32 for int8 / int8_float32), so the cached checkpoint is no larger than
    the float model would be; float16 represents q / scale to within 1/2048, far below the
    int8 step."""
    import numpy as np

    scales = [n for n in variables if n.endswith("/weight_scale")]
    if not scales:
        return dict(variables)
    floats = {
        v.dtype for n, v in variables.items() if v.ndim > 0 and np.issubdtype(v.dtype, np.floating)
    }
    out_dtype = np.float16 if floats <= {np.dtype(np.float16)} and floats else np.float32
    result = dict(variables)
    for scale_name in scales:
        name = scale_name[: -len("_scale")]
        q = variables.get(name)
        if q is None:
            raise WeightsError(f"{scale_name} has no {name} to scale")
        if q.dtype not in (np.int8, np.int16):
            raise WeightsError(f"{name} has a weight_scale but is {q.dtype}, not int8 or int16")
        scale = np.asarray(variables[scale_name], dtype=np.float32)
        if scale.ndim == 0 or scale.size == 1:
            restored = q.astype(np.float32) / scale.reshape(())
        elif scale.shape == (q.shape[0],):
            restored = q.astype(np.float32) / scale.reshape((-1,) + (1,) * (q.ndim - 1))
        else:
            raise WeightsError(f"{scale_name} has shape {scale.shape} for a {q.shape} weight")
        if not np.isfinite(restored).all():
            raise WeightsError(f"{scale_name} restores {name} to non-finite values")
        result[name] = restored.astype(out_dtype)
        del result[scale_name]
    # Aliases (the tied output projection) must follow their target.
    for alias, value in variables.items():
        for scale_name in scales:
            target = scale_name[: -len("_scale")]
            if alias != target and value is variables[target]:
                result[alias] = result[target]
    return result


# --------------------------------------------------------------------------------------------
# Hugging Face transformers

# transformers' WhisperForConditionalGeneration names (as in its convert_openai_to_hf.py
# and CTranslate2's WhisperLoader), after the leading "model.", per layer kind.
_HF_LAYER = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.layer_norm": "decoder.ln",
    "decoder.embed_tokens": "decoder.token_embedding",
}
_HF_POSITIONS = {
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
}
_HF_NAME = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")


def hf_dims(config: Mapping[str, Any]) -> dict[str, int]:
    if config.get("model_type") != "whisper":
        raise WeightsError(
            f"config.json says model_type {config.get('model_type')!r}, not 'whisper'"
        )
    keys = {
        "n_mels": "num_mel_bins",
        "n_audio_ctx": "max_source_positions",
        "n_audio_state": "d_model",
        "n_audio_head": "encoder_attention_heads",
        "n_audio_layer": "encoder_layers",
        "n_vocab": "vocab_size",
        "n_text_ctx": "max_target_positions",
        "n_text_state": "d_model",
        "n_text_head": "decoder_attention_heads",
        "n_text_layer": "decoder_layers",
    }
    try:
        dims = {k: int(config[v]) for k, v in keys.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"config.json lacks a usable Whisper setting: {e}") from e
    if any(v <= 0 for v in dims.values()):
        raise WeightsError(f"config.json has non-positive dimensions: {dims}")
    return dims


def convert_hf_folder(folder: Path) -> dict:
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    dims = hf_dims(config)
    tensors = read_hf_tensors(folder)
    state = map_hf_names(tensors)
    check_against_whisper(state, dims)
    generation = folder / "generation_config.json"
    heads = _read_json(generation).get("alignment_heads") if generation.is_file() else None
    return {
        "dims": dims,
        "model_state_dict": state,
        "alignment_heads": _heads(heads or config.get("alignment_heads"), dims),
    }


def read_hf_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of a transformers folder, by its transformers name (torch tensors)."""
    import torch

    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return _read_safetensors([single])
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index} has no weight_map")
        shards = []
        for shard in sorted(set(weight_map.values())):
            path = (folder / str(shard)).resolve()
            if path.parent != folder.resolve() or not path.is_file():
                raise WeightsError(f"{index} names a shard that is not in the folder: {shard}")
            shards.append(path)
        return _read_safetensors(shards)
    pickled = folder / "pytorch_model.bin"
    try:
        loaded = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, ...: all mean "not plain tensors"
        raise WeightsError(
            f"{pickled} cannot be read as plain tensors (torch.load with weights_only=True "
            f"refused it: {e}); it is not unpickled any other way: convert it to "
            "model.safetensors"
        ) from e
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise WeightsError(f"{pickled} is not a state dict of tensors")
    return loaded


def _read_safetensors(paths: list[Path]) -> dict[str, Any]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise WeightsError(
            "reading model.safetensors needs the safetensors package (pip install "
            "safetensors==0.8.0)"
        ) from e
    tensors: dict[str, Any] = {}
    for path in paths:
        try:
            shard = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read {path}: {e}") from e
        overlap = tensors.keys() & shard.keys()
        if overlap:
            raise WeightsError(f"{path} repeats tensors of another shard: {sorted(overlap)[:3]}")
        tensors.update(shard)
    return tensors


def map_hf_names(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """transformers names -> openai-whisper names; the tied output projection is dropped
    (after checking it is the token embedding), and so are all-zero key biases."""
    import torch

    state: dict[str, torch.Tensor] = {}
    embedding = None
    for raw_name, tensor in tensors.items():
        name = raw_name.removeprefix("model.")
        if name == "proj_out.weight":
            continue  # checked below
        if not torch.is_floating_point(tensor):
            raise WeightsError(f"{raw_name} is {tensor.dtype}, expected floating point")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # float16 would lose bfloat16's range
        tensor = tensor.contiguous()
        if name in _HF_POSITIONS:
            state[_HF_POSITIONS[name]] = tensor
            continue
        m = _HF_NAME.fullmatch(name)
        if m:
            side, index, layer, kind = m.groups()
            target = _HF_LAYER.get(layer)
            if target is None:
                raise WeightsError(f"unexpected tensor {raw_name}")
            if target.endswith(".key") and kind == "bias":
                if bool(tensor.any()):
                    raise WeightsError(f"{raw_name} is not zero: Whisper keys have no bias")
                continue
            state[f"{side}.blocks.{index}.{target}.{kind}"] = tensor
            continue
        prefix, _, kind = name.rpartition(".")
        if prefix in _HF_TOP:
            state[f"{_HF_TOP[prefix]}.{kind}"] = tensor
            if name == "decoder.embed_tokens.weight":
                embedding = tensor
            continue
        raise WeightsError(f"unexpected tensor {raw_name}")
    head = tensors.get("proj_out.weight")
    if (
        head is not None
        and embedding is not None
        and not torch.equal(head.to(embedding), embedding)
    ):
        raise WeightsError("proj_out.weight differs from the token embedding: Whisper ties them")
    return state


# --------------------------------------------------------------------------------------------
# Helpers


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise WeightsError(f"{path} is too large for a model configuration")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object")
    return data


def _heads(raw: Any, dims: Mapping[str, int]) -> list[tuple[int, int]] | None:
    """Valid (layer, head) pairs, or None (openai-whisper's default then applies)."""
    try:
        heads = [(int(layer), int(head)) for layer, head in raw]
    except (TypeError, ValueError):
        return None
    n_layer, n_head = dims["n_text_layer"], dims["n_text_head"]
    if not heads or not all(0 <= a < n_layer and 0 <= b < n_head for a, b in heads):
        return None
    return heads
