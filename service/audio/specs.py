"""Turning the API's `input`/`output` strings into sources and sinks.

Everything that can be checked is checked here, when the session is created, so a bad
device or a missing file is a 422 to the caller rather than a call that fails later. A
device is opened and closed once here (``probe``), so one that is busy or gone is refused
now; it can still fail later, which the call reports as ``audio_failed: ...``.

A `file:` path is confined to the media folder (``IM_MEDIA_DIR``, see wavfile.py) and is
opened here, once: the input is read whole, the output is created now and its descriptor
kept for the call, so what was checked is what is used. Every refusal of an input path
gets the same text (``INPUT_REFUSED``), and of an output path ``OUTPUT_REFUSED``: a caller
who could tell "missing" from "not a WAV" from "outside" could probe the node's disk. The
precise reason goes to the node's log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.audio.playout import PlayoutBuffer
from service.audio.sinks import NullSink, Sink, WavFileSink
from service.audio.sources import FileSource, SilenceSource, Source, ToneSource
from service.audio.wavfile import (
    AudioFileError,
    MediaPathError,
    create_media_output,
    open_media_input,
    read_wav,
)

log = logging.getLogger(__name__)

INPUT_REFUSED = (
    "file input refused: name a 16-bit PCM WAV file in the media folder (IM_MEDIA_DIR), "
    "by a path relative to it, with no '..' and no symbolic links"
)
OUTPUT_REFUSED = (
    "file output refused: name a new file in an existing folder of the media folder "
    "(IM_MEDIA_DIR), by a path relative to it, with no '..' and no symbolic links; "
    "an existing file is never overwritten"
)


class AudioSpecError(ValueError):
    """An input or output the node cannot use; the message says why."""


def open_source(spec: str | int, media_dir: Path | None = None) -> Source:
    """`silence`, `tone:HZ`, `file:PATH` (inside ``media_dir``), `default`, or a PortAudio
    device index or name."""
    if isinstance(spec, str):
        if spec == "silence":
            return SilenceSource()
        if spec.startswith("tone:"):
            try:
                hz = float(spec[5:])
            except ValueError:
                hz = -1.0
            if not 20 <= hz <= 7900:
                raise AudioSpecError(f"tone frequency must be 20-7900 Hz, got {spec[5:]!r}")
            return ToneSource(hz)
        if spec.startswith("file:"):
            return FileSource(_read_media(media_dir, spec[5:]))
    from service.audio.capture import DeviceSource
    from service.audio.devices import DeviceError

    try:
        source = DeviceSource(_device(spec, "input"))
        source.probe()
    except DeviceError as exc:
        raise AudioSpecError(str(exc)) from None
    return source


def open_sink(
    spec: str | int | None, playout: PlayoutBuffer | None = None, media_dir: Path | None = None
) -> Sink:
    """`null` (or JSON null), `file:PATH` (a new WAV recording inside ``media_dir``),
    `default`, or a device.

    The sink plays from ``playout`` (a fresh PlayoutBuffer when None); the session pushes
    received frames into ``sink.playout``."""
    if spec is None or spec == "null":
        return NullSink(playout)
    if isinstance(spec, str) and spec.startswith("file:"):
        raw = spec[5:]
        try:
            if media_dir is None:
                raise MediaPathError("this node has no media folder")
            file = create_media_output(media_dir, raw)
        except (MediaPathError, OSError) as exc:
            log.warning("refused file output %s: %s", _shown(raw), exc)
            raise AudioSpecError(OUTPUT_REFUSED) from None
        return WavFileSink(file, raw, playout)
    from service.audio.devices import DeviceError
    from service.audio.playback import DeviceSink

    try:
        sink = DeviceSink(_device(spec, "output"), playout)
        sink.probe()
    except DeviceError as exc:
        raise AudioSpecError(str(exc)) from None
    return sink


def _read_media(media_dir: Path | None, raw: str) -> np.ndarray:
    """The samples of the WAV at `raw` in the media folder, or the one refusal text."""
    try:
        if media_dir is None:
            raise MediaPathError("this node has no media folder")
        with open_media_input(media_dir, raw) as file:
            return read_wav(file)
    except (MediaPathError, AudioFileError, OSError) as exc:
        log.warning("refused file input %s: %s", _shown(raw), exc)
        raise AudioSpecError(INPUT_REFUSED) from None


def _shown(raw: str) -> str:
    """The path as the log shows it: repr (no control characters reach the log), and not
    all of a megabyte-long one."""
    return repr(raw) if len(raw) <= 300 else f"{raw[:300]!r}... ({len(raw)} characters)"


def _device(spec: str | int, kind: Literal["input", "output"]) -> Any:
    from service.audio import devices

    if spec == "default":
        return devices.default_device(kind)
    return devices.resolve(spec, kind)
