"""Which number format the model computes in (IM_COMPUTE_TYPE), per device.

- ``float16`` (CUDA): weights stored as float16, activations float16, as openai-whisper's
  ``fp16=True``. Weights are cast once at load instead of at every layer call (openai-whisper
  keeps float32 weights and casts each one per call, which costs time and a second copy);
  LayerNorms stay float32 because Whisper's LayerNorm computes in float32 anyway and feeds it
  float32 input.
- ``float32``: everything float32 (the CPU default; also possible on CUDA).
- ``int8`` (CPU): torch's dynamic quantization of the encoder's Linear layers (weights int8
  with a scale per output channel, activations quantized on the fly); the decoder, the
  convolutions, embeddings and LayerNorms stay float32 (see `quantize_int8` for why).
- ``auto``: float16 on CUDA; on a CPU, `CPU_AUTO`, chosen from scripts/bench_asr's figures
  (speed and WER of float32 against int8 on the English dev clips, README).

A combination the device cannot run (float16 on a CPU, int8 on CUDA) is refused at start.
"""

from __future__ import annotations

import warnings
from typing import Any

COMPUTE_TYPES = ("auto", "float32", "int8", "float16")
CPU_AUTO = "float32"  # see docs/benchmarks.md#precision before changing this


class PrecisionError(ValueError):
    """The compute type does not suit the device; the message says which would."""


def resolve(requested: str, device: str) -> str:
    """The concrete compute type for `device` ("cpu", "cuda", "cuda:N")."""
    cuda = device.startswith("cuda")
    if requested not in COMPUTE_TYPES:
        raise PrecisionError(
            f"compute type must be one of {', '.join(COMPUTE_TYPES)}, got {requested!r}"
        )
    if requested == "auto":
        return "float16" if cuda else CPU_AUTO
    if requested == "float16" and not cuda:
        raise PrecisionError(
            "IM_COMPUTE_TYPE=float16 needs a CUDA device (on a CPU float16 runs about 3x "
            "slower than float32); use auto, float32 or int8 on a CPU"
        )
    if requested == "int8" and cuda:
        raise PrecisionError(
            "IM_COMPUTE_TYPE=int8 is for CPUs (torch's dynamic quantization has no CUDA "
            "kernels); use auto (float16) or float32 on CUDA"
        )
    return requested


def prepare(model: Any, compute_type: str, device: str) -> Any:
    """Put a freshly loaded float32 Whisper on `device` in `compute_type`; returns it."""
    if compute_type == "float16":
        half_weights(model)
    elif compute_type == "int8":
        if device != "cpu":
            raise PrecisionError("int8 runs on the CPU only")
        model = quantize_int8(model)
    elif compute_type != "float32":
        raise PrecisionError(f"unknown compute type {compute_type!r}")
    if device == "cpu":
        output_rows_contiguous(model)
    return model.to(device)


def output_rows_contiguous(model: Any) -> None:
    """Store the token embedding column-major, so that its transpose, the decoder's output
    projection, is a contiguous matrix.

    Whisper ties its output projection to the token embedding and multiplies by
    ``weight.T`` for every token it decodes. On a CPU that product is a memory-bound pass
    over the whole vocabulary (51,864 x 384 floats for tiny: 80 MB) and a transposed
    operand is read at less than half the speed: 13 ms against 5.3 ms per token on the
    2-core VM, about 130 ms of a 14-token final's 550 ms of decoding (docs/benchmarks.md,
    "Final latency"). The values are the same; the embedding lookup reads rows either way.
    """
    import torch

    embedding = model.decoder.token_embedding
    weight = embedding.weight.detach()
    if not weight.t().is_contiguous():
        embedding.weight = torch.nn.Parameter(weight.t().contiguous().t(), requires_grad=False)


def half_weights(model: Any) -> None:
    """Every floating tensor but the LayerNorms' to float16, in place."""
    import torch
    from whisper.model import LayerNorm

    for module in model.modules():
        if isinstance(module, LayerNorm):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.half()
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and torch.is_floating_point(buf):
                setattr(module, name, buf.half())


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the encoder's Linear layers (CPU), one scale per output
    channel (as CTranslate2's per-row scales).

    Only the encoder: it is where a CPU spends its time (every utterance costs a full 30 s
    window), and quantizing the decoder too cost WER for little speed. Measured on the 38
    English dev clips up to 30 s, tiny.en, greedy, one thread: float32 6.7 % WER; encoder-only
    per-channel int8 6.7 % at 0.85x float32's time; every Linear layer int8 7.8 % at 0.79x;
    per-tensor scales were worse (8.1 % encoder-only).

    openai-whisper's Linear is a subclass of torch's that only adds a cast of the weight to
    the input's dtype, which float32 never needs; torch's quantizer accepts exactly
    nn.Linear, so the class is reset first. torch marks torch.ao.quantization deprecated in
    favour of the separate torchao package; it works unchanged in the pinned torch 2.13,
    and its warning is not shown to operators."""
    import torch
    from whisper.model import Linear

    for module in model.encoder.modules():
        if type(module) is Linear:
            module.__class__ = torch.nn.Linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        torch.ao.quantization.quantize_dynamic(
            model.encoder, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True
        )
    return model
