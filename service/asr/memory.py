"""What a model needs in memory, what the device has, and refusing at start when it won't fit.

The need is estimated from the model's dimensions alone (no file is read), so a model that
cannot fit is refused before a multi-gigabyte download and long before an out-of-memory error
in the middle of a call:

- **weights**: every tensor at its compute type's size (float32 4 bytes, float16 2; int8: the
  encoder's Linear weights 1 byte, the rest float32);
- **working memory** for the largest batch the engine will decode (IM_ASR_MAX_BATCH; auto is
  16 on CUDA, 1 on a CPU), per item: the 30 s mel window, the encoder's activations for one
  layer (residual, q/k/v, the 4x MLP; not the attention scores, which the fused
  scaled-dot-product attention openai-whisper uses never holds in full), the audio features,
  the decoder's cross- and self-attention key/value caches, and logits for a prompted first
  step; plus a fixed allowance for the runtime (allocator slack, BLAS/cuBLAS workspaces);
  on a CPU with IM_ASR_SHORT_CONTEXT also the cache of padding fills
  (service/asr/encoding.py, ``MAX_FILLS`` windows of audio features);
- **the load peak**: the model is built in float32 on the CPU and then cast or quantized, so
  loading briefly needs the float32 weights in host memory (quantizing swaps one layer at a
  time, so its int8 copies add little). The checkpoint itself is memory-mapped and not
  counted.

What the device has: on a CPU, MemAvailable from /proc/meminfo, lowered to the cgroup's limit
when one is set (a container's memory limit); on CUDA, torch.cuda.mem_get_info.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.asr.catalogue import parameter_count
from service.asr.checkpoint import WeightsError
from service.asr.encoding import MAX_FILLS

RUNTIME_ALLOWANCE = 512 << 20
GIB = float(1 << 30)


class InsufficientMemory(WeightsError):
    """The model (at this compute type and batch size) does not fit the device."""


@dataclass(frozen=True)
class Need:
    weights: int  # on the device, once loaded
    working: int  # on the device, for the largest batch
    host_peak: int  # host memory while loading (float32 build, then cast)
    batch: int

    @property
    def device_total(self) -> int:
        return self.weights + self.working


def weight_bytes(dims: Mapping[str, int], compute_type: str) -> int:
    n = parameter_count(dims)
    if compute_type == "float16":
        return 2 * n
    if compute_type == "int8":  # the encoder's Linear layers (precision.quantize_int8)
        linear = dims["n_audio_layer"] * 12 * dims["n_audio_state"] ** 2
        return linear + 4 * (n - linear)
    return 4 * n


def working_bytes(dims: Mapping[str, int], compute_type: str, batch: int) -> int:
    e = 2 if compute_type == "float16" else 4
    ctx, d_a, d_t = dims["n_audio_ctx"], dims["n_audio_state"], dims["n_text_state"]
    per_item = (
        dims["n_mels"] * 2 * ctx * 4  # log-mel of the 30 s window (float32)
        + 2 * ctx * d_a * e  # conv1 output, before the stride-2 conv2
        + 10 * ctx * d_a * e  # one encoder layer: residual, norm, q, k, v, out, 4x MLP
        + ctx * d_a * e  # the audio features kept for decoding
        + dims["n_text_layer"] * 2 * ctx * d_t * e  # cross-attention k/v cache
        + dims["n_text_layer"] * 2 * dims["n_text_ctx"] * d_t * e  # self-attention k/v cache
        + (dims["n_text_ctx"] // 2) * dims["n_vocab"] * 4  # logits of a prompted first step
    )
    return max(1, batch) * per_item + RUNTIME_ALLOWANCE


def estimate(
    dims: Mapping[str, int], compute_type: str, device: str, batch: int, fills: bool = False
) -> Need:
    """`fills`: short context is on (IM_ASR_SHORT_CONTEXT), which keeps fills on a CPU."""
    weights = weight_bytes(dims, compute_type)
    working = working_bytes(dims, compute_type, batch)
    if fills and not device.startswith("cuda"):
        working += MAX_FILLS * dims["n_audio_ctx"] * dims["n_audio_state"] * 4
    build = weight_bytes(dims, "float32")
    # On a CPU the build is on the device itself; on CUDA it happens in host memory first.
    host_peak = build if device.startswith("cuda") else max(build, weights + working)
    return Need(weights=weights, working=working, host_peak=host_peak, batch=max(1, batch))


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory for this process, cgroup limit included."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = info.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = info.get("MemAvailable", total)
    limit = _cgroup_limit()
    if limit is not None:
        cap, used = limit
        total = min(total, cap)
        available = min(available, max(0, cap - used))
    return available, total


def _cgroup_limit() -> tuple[int, int] | None:
    """(limit, usage) of this process's memory cgroup (v2, else v1), None when unlimited.

    The process's own cgroup comes from /proc/self/cgroup; in a container (its own cgroup
    namespace) that is "/", the mount's root."""
    v1 = v2 = "/"
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2 = path
            elif "memory" in controllers.split(","):
                v1 = path
    except (OSError, ValueError):
        pass
    candidates = [
        (Path("/sys/fs/cgroup", v2.lstrip("/")), "memory.max", "memory.current"),
        (Path("/sys/fs/cgroup/unified", v2.lstrip("/")), "memory.max", "memory.current"),
        (
            Path("/sys/fs/cgroup/memory", v1.lstrip("/")),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
    ]
    for folder, limit_file, usage_file in candidates:
        try:
            raw = (folder / limit_file).read_text().strip()
            if raw == "max":
                return None
            cap = int(raw)
            used = int((folder / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap >= 1 << 60:  # v1 spells "unlimited" as a huge number
            return None
        return cap, used
    return None


def device_memory(device: str) -> tuple[int, int]:
    """(available, total) bytes on `device`."""
    if not device.startswith("cuda"):
        return host_memory()
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(index)
    return int(free), int(total)


def check(
    model: str,
    dims: Mapping[str, int],
    compute_type: str,
    device: str,
    batch: int,
    *,
    available: Mapping[str, tuple[int, int]] | None = None,
    fills: bool = False,
) -> Need:
    """Refuse (InsufficientMemory, with both figures) a model that cannot fit; else return the
    estimate. `available` maps "device"/"host" to (available, total) instead of asking the
    system, for callers that already know."""
    need = estimate(dims, compute_type, device, batch, fills)
    have = dict(available or {})
    dev_free, dev_total = have.get("device") or device_memory(device)
    on_cuda = device.startswith("cuda")
    items = f"{need.batch} utterance{'s' if need.batch > 1 else ''} at once"
    if need.device_total > dev_free:
        raise InsufficientMemory(
            f"model {model} as {compute_type} on {device} needs about "
            f"{need.device_total / GIB:.1f} GiB (weights {need.weights / GIB:.1f} GiB + working "
            f"memory for {items} {need.working / GIB:.1f} GiB), but {device} has "
            f"{dev_free / GIB:.1f} GiB available of {dev_total / GIB:.1f} GiB; choose a smaller "
            "model (python -m service.asr.weights --list shows what each needs)"
            + (", a smaller IM_ASR_MAX_BATCH" if need.batch > 1 else "")
            + (", or IM_COMPUTE_TYPE=int8" if not on_cuda and compute_type != "int8" else "")
        )
    host_free, host_total = have.get("host") or (
        host_memory() if on_cuda else (dev_free, dev_total)
    )
    if need.host_peak > host_free:
        raise InsufficientMemory(
            f"loading model {model} as {compute_type} needs about {need.host_peak / GIB:.1f} GiB "
            f"of host memory for a moment (it is built in float32 first), but the host has "
            f"{host_free / GIB:.1f} GiB available of {host_total / GIB:.1f} GiB; choose a "
            "smaller model (python -m service.asr.weights --list shows what each needs)"
        )
    return need
