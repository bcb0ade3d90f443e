"""Every official Whisper model by name: dimensions, languages, alignment heads, download.

A plain table, importable without torch (the settings check names against it at start). The
URLs, SHA-256 digests and alignment heads are openai-whisper's own (`whisper._MODELS` and
`whisper._ALIGNMENT_HEADS` in openai-whisper 20250625; the heads are decoded here into
(layer, head) pairs, and tests/test_catalogue.py checks both tables against the installed
package). The dimensions are those of the published checkpoints' ``dims``; every size's heads
mask decodes to exactly ``n_text_layer * n_text_head`` entries, and the test builds each model
on the meta device to check the parameter count below.

``large`` is ``large-v3`` and ``turbo`` is ``large-v3-turbo``, as in openai-whisper: the same
file, the same cache name (``large-v3.pt``, ``large-v3-turbo.pt``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Where openai-whisper downloads from. A mirror with the same layout
# (<base>/<sha256>/<file>) can stand in for it: IM_MODEL_DOWNLOAD_BASE.
DOWNLOAD_BASE = "https://openaipublic.azureedge.net/main/whisper/models"

N_AUDIO_CTX = 1500  # 30 s of audio at 50 encoder frames per second
N_TEXT_CTX = 448
VOCAB_EN = 51864  # English-only
VOCAB_V1 = 51865  # multilingual, 99 languages
VOCAB_V3 = 51866  # large-v3 and turbo: 100 languages (adds Cantonese)


@dataclass(frozen=True)
class ModelInfo:
    """One official checkpoint as openai-whisper publishes it."""

    name: str  # canonical name (aliases resolve to it)
    sha256: str  # of the .pt file; also the URL's last directory
    dims: Mapping[str, int]  # openai-whisper ModelDimensions
    alignment_heads: tuple[tuple[int, int], ...]  # (text layer, head) used for word timings

    @property
    def file(self) -> str:
        """The file name in Whisper's own cache (~/.cache/whisper) and in IM_MODEL_DIR."""
        return f"{self.name}.pt"

    def url(self, base: str = DOWNLOAD_BASE) -> str:
        return f"{base.rstrip('/')}/{self.sha256}/{self.file}"

    @property
    def multilingual(self) -> bool:
        return self.dims["n_vocab"] >= VOCAB_V1

    @property
    def n_languages(self) -> int:
        """As openai-whisper counts them (Whisper.num_languages)."""
        return self.dims["n_vocab"] - 51765 - int(self.multilingual) if self.multilingual else 1

    @property
    def parameters(self) -> int:
        return parameter_count(self.dims)

    @property
    def download_bytes(self) -> int:
        """About the size of the published file: every tensor is stored as float16."""
        return 2 * self.parameters


def _dims(
    width: int, heads: int, layers: int, vocab: int, n_mels: int = 80, text_layers: int = 0
) -> dict[str, int]:
    return {
        "n_mels": n_mels,
        "n_audio_ctx": N_AUDIO_CTX,
        "n_audio_state": width,
        "n_audio_head": heads,
        "n_audio_layer": layers,
        "n_vocab": vocab,
        "n_text_ctx": N_TEXT_CTX,
        "n_text_state": width,
        "n_text_head": heads,
        "n_text_layer": text_layers or layers,
    }


def _heads(pairs: str) -> tuple[tuple[int, int], ...]:
    """ "1.0 2.5" -> ((1, 0), (2, 5)): (text layer, head) pairs, compactly."""
    return tuple((int(a), int(b)) for a, b in (p.split(".") for p in pairs.split()))


_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        "tiny.en",
        "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03",
        _dims(384, 6, 4, VOCAB_EN),
        _heads("1.0 2.0 2.5 3.0 3.1 3.2 3.3 3.4"),
    ),
    ModelInfo(
        "tiny",
        "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
        _dims(384, 6, 4, VOCAB_V1),
        _heads("2.2 3.0 3.2 3.3 3.4 3.5"),
    ),
    ModelInfo(
        "base.en",
        "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead",
        _dims(512, 8, 6, VOCAB_EN),
        _heads("3.3 4.7 5.1 5.5 5.7"),
    ),
    ModelInfo(
        "base",
        "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
        _dims(512, 8, 6, VOCAB_V1),
        _heads("3.1 4.2 4.3 4.7 5.1 5.2 5.4 5.6"),
    ),
    ModelInfo(
        "small.en",
        "f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872",
        _dims(768, 12, 12, VOCAB_EN),
        _heads(
            "6.6 7.0 7.3 7.8 8.2 8.5 8.7 9.0 9.4 9.8 9.10 10.0 10.1 10.2 10.3 10.6 10.11 11.2 11.4"
        ),
    ),
    ModelInfo(
        "small",
        "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794",
        _dims(768, 12, 12, VOCAB_V1),
        _heads("5.3 5.9 8.0 8.4 8.7 8.8 9.0 9.7 9.9 10.5"),
    ),
    ModelInfo(
        "medium.en",
        "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f",
        _dims(1024, 16, 24, VOCAB_EN),
        _heads(
            "11.4 14.1 14.12 14.14 15.4 16.0 16.4 16.9 17.12 17.14 18.7 18.10 18.15 "
            "20.0 20.3 20.9 20.14 21.12"
        ),
    ),
    ModelInfo(
        "medium",
        "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1",
        _dims(1024, 16, 24, VOCAB_V1),
        _heads("13.15 15.4 15.15 16.1 20.0 23.4"),
    ),
    ModelInfo(
        "large-v1",
        "e4b87e7e0bf463eb8e6956e646f1e277e901512310def2c24bf0e11bd3c28e9a",
        _dims(1280, 20, 32, VOCAB_V1),
        _heads("9.19 11.2 11.4 11.17 22.7 22.11 22.17 23.2 23.15"),
    ),
    ModelInfo(
        "large-v2",
        "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524",
        _dims(1280, 20, 32, VOCAB_V1),
        _heads(
            "10.12 13.17 16.11 16.12 16.13 17.15 17.16 18.4 18.11 18.19 19.11 21.2 "
            "21.3 22.3 22.9 22.12 23.5 23.7 23.13 25.5 26.1 26.12 27.15"
        ),
    ),
    ModelInfo(
        "large-v3",
        "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb",
        _dims(1280, 20, 32, VOCAB_V3, n_mels=128),
        _heads("7.0 10.17 12.18 13.12 16.1 17.14 19.11 21.4 24.1 25.6"),
    ),
    ModelInfo(
        "large-v3-turbo",
        "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a",
        _dims(1280, 20, 32, VOCAB_V3, n_mels=128, text_layers=4),
        _heads("2.4 2.11 3.3 3.6 3.11 3.14"),
    ),
)

MODELS: dict[str, ModelInfo] = {m.name: m for m in _MODELS}
ALIASES: dict[str, str] = {"large": "large-v3", "turbo": "large-v3-turbo"}
# Every name IM_MODEL accepts, in openai-whisper's order of size.
NAMES: tuple[str, ...] = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
)  # fmt: skip


class UnknownModel(KeyError):
    """Not an official name; str() lists the known ones."""

    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}: the official names are {', '.join(NAMES)}"


def lookup(name: str) -> ModelInfo:
    """The model for an official name or alias; UnknownModel (listing them all) otherwise."""
    info = MODELS.get(ALIASES.get(name, name))
    if info is None:
        raise UnknownModel(name)
    return info


def parameter_count(dims: Mapping[str, int]) -> int:
    """Tensors in a Whisper state dict, counted in elements (positional embeddings included).

    Per encoder block: attention q, k (no bias), v, out = 4d^2 + 3d; MLP d -> 4d -> d =
    8d^2 + 5d; two LayerNorms 4d. Per decoder block the same plus cross-attention and its
    LayerNorm. Closed form, so `--list` and the memory check need no torch."""
    d_a, d_t = dims["n_audio_state"], dims["n_text_state"]
    encoder = (
        dims["n_mels"] * d_a * 3 + d_a  # conv1
        + d_a * d_a * 3 + d_a  # conv2
        + dims["n_audio_ctx"] * d_a  # positional embedding (a buffer, but in the file)
        + dims["n_audio_layer"] * (12 * d_a * d_a + 12 * d_a)
        + 2 * d_a  # ln_post
    )  # fmt: skip
    decoder = (
        dims["n_vocab"] * d_t  # token embedding, tied to the output projection
        + dims["n_text_ctx"] * d_t
        + dims["n_text_layer"] * (16 * d_t * d_t + 17 * d_t)
        + 2 * d_t
    )
    return encoder + decoder


def linear_parameter_count(dims: Mapping[str, int]) -> int:
    """Elements in the Linear layers' weights (what int8 quantization shrinks to 1 byte)."""
    d_a, d_t = dims["n_audio_state"], dims["n_text_state"]
    return dims["n_audio_layer"] * 12 * d_a * d_a + dims["n_text_layer"] * 16 * d_t * d_t
