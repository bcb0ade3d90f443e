"""Opening, probing, watching and closing PortAudio streams: what capture and playback share.

- Streams run in callback mode, so no greenlet ever blocks in a native read/write. The
  callbacks never block and never touch gevent, except ``ThreadToHub.put_nowait`` (capture)
  and ``PlayoutBuffer.pull`` (playback, a native lock held for bookkeeping only).
- A device that cannot do 16 kHz is opened at its default rate and resampled with soxr.
- A device that dies mid-call is noticed, never waited on: PortAudio marks the stream
  inactive when its host API fails (measured on the PulseAudio rig: killing the sound server
  stops the stream at once, and closing it afterwards returns in < 1 ms), and a stream that
  stays active but stops calling back for ``LOST_AFTER_S`` counts as lost too. A source then
  raises ``DeviceLost`` from ``read()``; a sink sets ``failed`` and calls ``on_failed``.
  Note: PulseAudio *hides* an unplugged device (its streams move to the default device),
  so through PulseAudio an unplug is heard on another device rather than reported.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pyaudio

from service.audio.devices import DeviceError, DeviceInfo, Kind, shared_pa
from service.frames import FRAME_MS, SAMPLE_RATE

# soxr's "LQ" recipe streams evenly (one output block per 20 ms input, ~15 ms delay) where
# "HQ" bunches output into every other callback (~30 ms of jitter), and its quality is ample
# for speech at 16 kHz.
RESAMPLE_QUALITY = "LQ"


# A running stream that has not called back for this long is dead. The first callback gets
# longer: an idle PulseAudio null-sink monitor delivers its first capture 1-2 s late.
LOST_AFTER_S = 1.0
FIRST_CALLBACK_S = 3.0
HEALTH_CHECK_S = 0.25


def _supports(pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind, rate: int) -> bool:
    kwargs: dict[str, Any] = (
        {"input_device": device.index, "input_channels": 1, "input_format": pyaudio.paInt16}
        if kind == "input"
        else {"output_device": device.index, "output_channels": 1, "output_format": pyaudio.paInt16}
    )
    try:
        return bool(pa.is_format_supported(rate, **kwargs))
    except (ValueError, OSError):
        return False


def stream_rate(pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind) -> int:
    """16 kHz when the device (or its host API's converter) does it, else the native rate.

    Letting ALSA/PulseAudio convert is cheaper than converting ourselves; soxr is only for
    devices that refuse 16 kHz.
    """
    if _supports(pa, device, kind, SAMPLE_RATE):
        return SAMPLE_RATE
    return round(device.default_sample_rate)


def open_stream(
    device: DeviceInfo,
    kind: Kind,
    callback: Any,
    rate: int,
    frames_per_buffer: int,
    start: bool = True,
) -> Any:
    pa = shared_pa()
    try:
        return pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=rate,
            input=kind == "input",
            output=kind == "output",
            input_device_index=device.index if kind == "input" else None,
            output_device_index=device.index if kind == "output" else None,
            frames_per_buffer=frames_per_buffer,
            stream_callback=callback,
            start=start,
        )
    except (OSError, ValueError) as exc:
        raise DeviceError(
            f"cannot open {kind} device {device.describe()} at {rate} Hz mono: {exc} "
            "(in use by another program, unplugged, or the sound server is down?)"
        ) from exc


def probe_device(device: DeviceInfo, kind: Kind) -> None:
    """Open the device once and close it again, so that one that cannot be opened now (busy,
    gone, refused) is a DeviceError when the session is created, not when the call connects.
    Costs one open/close (a few ms through PulseAudio)."""
    pa = shared_pa()
    rate = stream_rate(pa, device, kind)
    stream = open_stream(device, kind, None, rate, rate * FRAME_MS // 1000, start=False)
    close_stream(stream)


def stream_trouble(
    stream: Any, kind: Kind, device: DeviceInfo, started: float, last_callback: float | None
) -> str | None:
    """Why a running stream is dead, or None while it is fine. Cheap; call from the hub."""
    what = f"{kind} device {device.name!r} lost"
    try:
        active = bool(stream.is_active())
    except Exception as exc:  # PyAudio raises once PortAudio has dropped the stream
        return f"{what}: {exc}"
    if not active:
        return f"{what}: its audio stream stopped (unplugged, or the sound server went away)"
    now = time.monotonic()
    if last_callback is None:
        if now - started > FIRST_CALLBACK_S:
            return f"{what}: no audio from it {now - started:.1f} s after opening"
    elif now - last_callback > LOST_AFTER_S:
        return f"{what}: no audio from it for {now - last_callback:.1f} s"
    return None


def close_stream(stream: Any) -> None:
    """Stop and close, tolerating a stream PortAudio already gave up on."""
    with contextlib.suppress(Exception):
        stream.stop_stream()
    with contextlib.suppress(Exception):
        stream.close()
