"""Ogg Opus files (RFC 7845 over RFC 3533), written page by page and read back for checks.

Written by hand rather than through a muxer: a recording is one mono Opus stream of 20 ms
packets, so a page is a header, a lacing table and the packets, and the only arithmetic is
the CRC and the granule position (48 kHz samples decoded since the stream's start, the
pre-skip's included). Each page is complete on its own (no packet spans two), so a file cut anywhere
(a node killed mid-write) is readable up to its last whole page, and ``scan`` finds it.

Why not ffmpeg or libogg: ffmpeg would be a process per call fed through a pipe, and
re-muxing packets that are already Opus is exactly what this file does in ~100 lines.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

OPUS_RATE = 48_000  # granule positions count 48 kHz samples whatever the input rate
HEADER = struct.Struct("<4sBBqIIIB")  # "OggS", version, flags, granule, serial, seq, crc, nsegs
CONTINUED, BOS, EOS = 0x01, 0x02, 0x04
MAX_SEGMENTS = 255
MAX_PAGE = HEADER.size + MAX_SEGMENTS + MAX_SEGMENTS * 255

# Ogg's CRC-32 is the unreflected one (polynomial 0x04C11DB7, initial value 0, no final
# xor). zlib's is the same polynomial reflected, so mirroring every input byte and the
# result turns one into the other: C speed without a table walked in Python.
_MIRROR = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def crc32(data: bytes) -> int:
    """The CRC of an Ogg page (computed with its CRC field zeroed)."""
    reflected = zlib.crc32(data.translate(_MIRROR), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def opus_head(pre_skip: int, input_rate: int, channels: int = 1) -> bytes:
    """RFC 7845 §5.1: version 1, mapping family 0 (mono or stereo), no output gain."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str, comments: dict[str, str]) -> bytes:
    """RFC 7845 §5.2: a vendor string and ``KEY=value`` comments."""
    out = [b"OpusTags", _string(vendor.encode()), struct.pack("<I", len(comments))]
    out += [_string(f"{k}={v}".encode()) for k, v in comments.items()]
    return b"".join(out)


def _string(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def page(packets: list[bytes], granule: int, serial: int, sequence: int, flags: int) -> bytes:
    """One page holding ``packets`` whole (the caller keeps them within 255 lacing values)."""
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    if len(lacing) > MAX_SEGMENTS:
        raise ValueError(f"{len(lacing)} lacing values do not fit one page")
    head = HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    body = head + bytes(lacing) + b"".join(packets)
    crc = crc32(body)
    return body[:22] + struct.pack("<I", crc) + body[26:]


def lacing_values(packet: bytes) -> int:
    return len(packet) // 255 + 1


class OggOpusWriter:
    """Pages of one mono Opus stream onto ``out``; the caller decides when a page ends
    (``flush``) and when the data must reach the disk (``out`` is its file)."""

    def __init__(
        self, out: BinaryIO, serial: int, pre_skip: int, input_rate: int, tags: dict[str, str]
    ) -> None:
        self._out = out
        self._serial = serial
        self._sequence = 0
        self._packets: list[bytes] = []
        self._lacing = 0
        self.pre_skip = pre_skip
        # Every sample decoded so far, the pre-skip's too (RFC 7845 §4): a reader drops the
        # first ``pre_skip`` (the encoder's lookahead), so output sample 0 is input sample 0.
        self.granule = 0
        self._write([opus_head(pre_skip, input_rate)], 0, BOS)
        self._write([opus_tags("intellimeet", tags)], 0, 0)

    @property
    def pending(self) -> int:
        """Packets waiting for the next page."""
        return len(self._packets)

    def add(self, packet: bytes, samples_48k: int) -> None:
        if self._lacing + lacing_values(packet) > MAX_SEGMENTS:
            self.flush()
        self._packets.append(packet)
        self._lacing += lacing_values(packet)
        self.granule += samples_48k

    def flush(self, eos: bool = False) -> None:
        """End the current page (with EOS: the last one, even if it holds no packet)."""
        if not self._packets and not eos:
            return
        self._write(self._packets, self.granule, EOS if eos else 0)
        self._packets, self._lacing = [], 0

    def _write(self, packets: list[bytes], granule: int, flags: int) -> None:
        self._out.write(page(packets, granule, self._serial, self._sequence, flags))
        self._sequence += 1


@dataclass(frozen=True)
class Page:
    offset: int
    flags: int
    granule: int
    serial: int
    sequence: int
    packets: list[bytes]

    @property
    def end(self) -> int:
        return (
            self.offset
            + HEADER.size
            + sum(lacing_values(p) for p in self.packets)
            + sum(len(p) for p in self.packets)
        )


def pages(path: Path) -> Iterator[Page]:
    """Every whole, CRC-correct page from the start of ``path``; stops at the first that is
    not (a torn tail after a kill, or something that is not Ogg)."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            magic, version, flags, granule, serial, seq, crc, nsegs = HEADER.unpack(head)
            if magic != b"OggS" or version != 0:
                return
            lacing = f.read(nsegs)
            sizes, size = [], 0
            for value in lacing:
                size += value
                if value < 255:
                    sizes.append(size)
                    size = 0
            body = f.read(sum(lacing))
            if len(lacing) < nsegs or len(body) < sum(lacing) or size:
                return  # torn, or a packet continued on the next page (not ours)
            raw = head[:22] + b"\0\0\0\0" + head[26:] + lacing + body
            if crc32(raw) != crc:
                return
            packets, at = [], 0
            for n in sizes:
                packets.append(body[at : at + n])
                at += n
            yield Page(offset, flags, granule, serial, seq, packets)
            offset += len(raw)


@dataclass(frozen=True)
class Scan:
    """What a recording file holds: whole pages up to ``valid_bytes``, ending cleanly
    (``complete``: an EOS page) or cut off; ``duration_s`` on the stream's timeline."""

    valid_bytes: int
    complete: bool
    duration_s: float
    pre_skip: int


def scan(path: Path) -> Scan:
    valid = 0
    complete = False
    granule = pre_skip = 0
    for i, p in enumerate(pages(path)):
        if i == 0 and p.packets and p.packets[0][:8] == b"OpusHead":
            pre_skip = struct.unpack_from("<H", p.packets[0], 10)[0]
        valid = p.end
        granule = max(granule, p.granule)
        complete = bool(p.flags & EOS)
    return Scan(valid, complete, max(0, granule - pre_skip) / OPUS_RATE, pre_skip)
