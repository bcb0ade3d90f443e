"""The encoder's features for a batch; on a CPU, a cheaper way to them for short audio
(IM_ASR_SHORT_CONTEXT=1, off by default: whispered speech loses accuracy with it).

Whisper encodes a 30 s window whatever the audio's length: on one CPU core that is about
0.8 s for tiny.en, more than half of what a live final costs, for an utterance of a few
seconds. `PaddingFill` encodes only the audio and `PAD_S` after it (a 4 s utterance: 6 s,
about 0.13 s), and takes the rest of the window, which is padding, from one pass over
padding alone at the same log-mel level, cached per level. The decoder then still
attends to a 30 s window that ends in padding, and that is what tells it the speech has
ended: with the context merely cut short, tiny.en repeats the sentence until its token
limit on 7 of 39 dev clips (docs/benchmarks.md, "Short context"). The level matters: a
fill encoded at silence's level broke loud babble.

The fill is an approximation: in a full pass the padding's features depend a little on
the audio, through self-attention. So every row it gives is marked approximate, and
`decoding.decode_group` keeps a decode of it only when it is to be trusted
(`decoding.trusted`: the filters keep it, the model is sure there is speech, it repeats
no run of tokens); any other is decoded again on the exact features
(`Features.make_exact`), as it would have been without the fill.

The features of a row do not depend on what it is batched with, in either way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PAD_S = 2.0  # padding encoded with the audio: with 1 s, whispered speech looped (34.8 % WER)
STEP_S = 1.0  # windows are whole seconds, so a few sizes recur
LEVEL_STEP = 0.05  # fills are cached per this much of log-mel level (range about 1.0)
MAX_FILLS = 32  # of 1500 x d_model floats each: 2.3 MB for tiny, 7.7 MB for large
FRAMES_PER_S = 100  # log-mel frames


@dataclass
class Features:
    """A batch's encoder features, one row per item, each exact or approximate."""

    model: Any
    mel: torch.Tensor  # the batch's log-mel, kept to make a row exact
    tensor: torch.Tensor  # (batch, n_audio_ctx, d_model)
    approximate: set[int] = field(default_factory=set)  # rows from `PaddingFill`

    def make_exact(self, rows: list[int]) -> None:
        """Encode `rows` over their whole window, as Whisper does."""
        rows = [r for r in rows if r in self.approximate]
        if rows:
            self.tensor[rows] = self.model.embed_audio(self.mel[rows])
            self.approximate.difference_update(rows)


class PaddingFill:
    """Encodes short audio over its own length plus `PAD_S`, and fills the rest of the
    window from a cached encoding of padding at the same level (module docstring). For one
    model, used by one thread at a time (the worker's); the cache is bounded (`MAX_FILLS`)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._fills: OrderedDict[int, torch.Tensor] = OrderedDict()

    def rows(self, mel: torch.Tensor, seconds: list[float | None]) -> dict[int, torch.Tensor]:
        """Approximate features for the rows worth it: audio that leaves more than `PAD_S`
        of its window to padding (None: a row to encode in full)."""
        out = {}
        for i, s in enumerate(seconds):
            if s is None:
                continue
            window_s = min(30.0, math.ceil((s + PAD_S) / STEP_S) * STEP_S)
            if window_s < 30.0:
                out[i] = self.encode(mel[i : i + 1], round(window_s * FRAMES_PER_S))
        return out

    def encode(self, mel: torch.Tensor, frames: int) -> torch.Tensor:
        """One row's features: the encoder over its first `frames`, then the fill."""
        import torch
        import torch.nn.functional as F

        # whisper's AudioEncoder.forward, over `frames` only: it asserts a 30 s window.
        enc = self.model.encoder
        x = F.gelu(enc.conv1(mel[:, :, :frames]))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = (x + enc.positional_embedding[: x.shape[1]]).to(x.dtype)
        for block in enc.blocks:  # each block's hooks run as in a full pass (stop_when)
            x = block(x)
        x = enc.ln_post(x)
        # The window's last frame is padding: its log-mel is the window's floor.
        fill = self.fill(float(mel[0, :, -1].min()), mel)
        return torch.cat([x, fill[:, x.shape[1] :]], dim=1)

    def fill(self, level: float, like: torch.Tensor) -> torch.Tensor:
        """The encoding of a window of padding alone at log-mel `level` (rounded)."""
        import torch

        key = round(level / LEVEL_STEP)
        cached = self._fills.get(key)
        if cached is not None:
            self._fills.move_to_end(key)
            return cached
        encoded: torch.Tensor = self.model.embed_audio(torch.full_like(like, key * LEVEL_STEP))
        self._fills[key] = encoded
        if len(self._fills) > MAX_FILLS:
            self._fills.popitem(last=False)
        return encoded
