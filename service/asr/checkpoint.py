"""openai-whisper checkpoint files: reading them safely, checking a state dict against a real
Whisper, writing them atomically; and ``WeightsError``, which every weights module raises.

The bottom of the weights modules (ct2.py, bundled.py, converters.py and weights.py build on
it), so the error and the file rules live once. Checkpoints are read with
``torch.load(weights_only=True, mmap=True)``: tensors and plain containers only, and the
file's pages are mapped rather than copied, so loading needs about the model's own size in
memory, not twice it. Every file that appears in the model directory appears complete
(written beside it, then ``os.replace``d).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path


class WeightsError(RuntimeError):
    """Weights are missing, damaged or unusable; the message names the model and the fix."""


# What a damaged or foreign checkpoint (or an unusable device: torch says RuntimeError) raises.
LOAD_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    KeyError,
    TypeError,
    ValueError,
    pickle.PickleError,
)


def read_checkpoint(path: Path) -> dict:
    """torch.load(weights_only=True), memory-mapped when the file allows it (any file torch
    has written since 1.6, the official checkpoints included)."""
    import torch

    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = checkpoint["dims"]
        if not isinstance(dims, dict) or not isinstance(checkpoint["model_state_dict"], dict):
            raise TypeError("not an openai-whisper checkpoint ({'dims', 'model_state_dict'})")
    except LOAD_ERRORS as e:
        raise WeightsError(
            f"cannot read checkpoint {path}: {e} (if the file is damaged, delete it: official "
            "models are fetched or converted again on next use)"
        ) from e
    return checkpoint


def check_against_whisper(state: Mapping[str, object], dims: Mapping[str, int]) -> None:
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


def save_atomically(checkpoint: dict, target: Path) -> None:
    """torch.save into a temporary file beside `target`, then os.replace(): readers never see
    half a checkpoint, and two processes converting at once both end with a whole one."""
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
