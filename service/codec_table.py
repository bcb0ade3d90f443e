"""The one table of codecs a call can use: wire id, name, frame size and Opus limits.

The wire (transport/), the codecs themselves (audio/codecs.py) and the settings
(IM_CODECS, IM_OPUS_BITRATE, IM_OPUS_FRAME_MS) all read it, so a codec's identity is one
enum member everywhere (its ``label`` is the name hellos and stats use) and no limit is
written twice. It sits at the bottom of the import graph, beside ``frames``.
"""

from __future__ import annotations

from enum import IntEnum

from service.frames import FRAME_SAMPLES


class Codec(IntEnum):
    """A codec, by its wire id (the byte in every audio frame)."""

    PCM16 = 0
    OPUS = 1

    @property
    def label(self) -> str:
        """The name in hellos, settings and stats: ``pcm16``, ``opus``."""
        return self.name.lower()

    @classmethod
    def named(cls, label: str) -> Codec:
        """The codec called ``label`` (any case); ValueError for one that is not."""
        try:
            return cls[label.upper()]
        except KeyError:
            known = ", ".join(c.label for c in cls)
            raise ValueError(f"unknown codec {label!r}; known: {known}") from None


LABELS = tuple(c.label for c in Codec)
PREFERENCE = (Codec.OPUS, Codec.PCM16)  # the first one both sides list is used
PCM16_FRAME_BYTES = FRAME_SAMPLES * 2  # 20 ms of 16 kHz mono 16-bit: the one PCM frame size
OPUS_BITRATE_MIN, OPUS_BITRATE_MAX = 16_000, 24_000  # bit/s, wideband speech
OPUS_FRAME_MS = (10, 20)
OPUS_MAX_PACKET = 1275  # RFC 6716 §3.4 (R2): the largest one-frame packet
