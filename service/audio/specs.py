"""Turning the API's `input`/`output` strings into sources and sinks.

Everything that can be checked is checked here, when the session is created, so a bad
device or a missing file is a 422 to the caller rather than a call that fails later. A
device is opened and closed once here (``probe``), so one that is busy or gone is refused
now; it can still fail later, which the call reports as ``audio_failed: ...``.
"""

from __future__ import annotations

from pathlib import Path

from service.audio.playout import PlayoutBuffer
from service.audio.sinks import NullSink, Sink, WavFileSink
from service.audio.sources import FileSource, SilenceSource, Source, ToneSource
from service.audio.wavfile import AudioFileError, read_wav


class AudioSpecError(ValueError):
    """An input or output the node cannot use; the message says why."""


def open_source(spec: str | int) -> Source:
    """`silence`, `tone:HZ`, `file:PATH`, `default`, or a PortAudio device index or name."""
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
            try:
                return FileSource(read_wav(Path(spec[5:]).expanduser()))
            except AudioFileError as exc:
                raise AudioSpecError(str(exc)) from None
    from service.audio import devices

    try:
        source = devices.DeviceSource(_device(spec, "input"))
        source.probe()
    except devices.DeviceError as exc:
        raise AudioSpecError(str(exc)) from None
    return source


def open_sink(spec: str | int | None, playout: PlayoutBuffer | None = None) -> Sink:
    """`null` (or JSON null), `file:PATH` (a WAV recording), `default`, or a device.

    The sink plays from ``playout`` (a fresh PlayoutBuffer when None); the session pushes
    received frames into ``sink.playout``."""
    if spec is None or spec == "null":
        return NullSink(playout)
    if isinstance(spec, str) and spec.startswith("file:"):
        path = Path(spec[5:]).expanduser()
        if not path.parent.is_dir():
            raise AudioSpecError(f"cannot record to {path}: no such directory")
        if path.exists():
            raise AudioSpecError(f"cannot record to {path}: it exists (never overwritten)")
        return WavFileSink(path, playout)
    from service.audio import devices

    try:
        sink = devices.DeviceSink(_device(spec, "output"), playout)
        sink.probe()
    except devices.DeviceError as exc:
        raise AudioSpecError(str(exc)) from None
    return sink


def _device(spec: str | int, kind: str):
    from service.audio import devices

    if spec == "default":
        return devices.default_device(kind)
    return devices.resolve(spec, kind)
