"""Live sound devices through PyAudio/PortAudio: the catalogue, and finding the device a user
means.

The rest of the node speaks 20 ms / 16 kHz ``Frame``s and runs on gevent; PortAudio speaks
whatever rate a device likes and calls back on its own OS thread. That seam is four modules:
this one (the process's one PortAudio, listing devices, resolving a spec), streams.py
(opening, probing, watching and closing streams), capture.py (``DeviceSource``) and
playback.py (``DeviceSink``).

One ``pyaudio.PyAudio`` per process (``shared_pa()``): initialising PortAudio probes every
ALSA device (slow, and ~40 lines of stderr noise), and its device list is fixed at that
moment.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyaudio

__all__ = [
    "DeviceError",
    "DeviceInfo",
    "default_device",
    "list_devices",
    "resolve",
]

Kind = Literal["input", "output"]


class DeviceError(ValueError):
    """A device that was asked for cannot be used.

    The message is written for a person (it becomes an HTTP 422 body): what was asked, why it
    is unusable, and which devices exist instead.
    """


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def describe(self) -> str:
        return (
            f"{self.index}: {self.name!r} ({self.host_api}, {self.max_input_channels} in, "
            f"{self.max_output_channels} out, {self.default_sample_rate:g} Hz)"
        )


# --- the shared PortAudio instance ------------------------------------------------------------

_pa_lock = threading.Lock()


_pa_instance: pyaudio.PyAudio | None = None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the duration.

    ALSA and JACK print dozens of harmless lines while PortAudio probes devices, straight to
    fd 2 from C, so redirecting ``sys.stderr`` would not help. Errors still surface as
    exceptions from PyAudio.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no usable fd 2 (embedded interpreter): leave it alone
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def shared_pa() -> pyaudio.PyAudio:
    """The process's one PyAudio instance, created on first use.

    Raises whatever PyAudio raises if PortAudio cannot initialise.
    """
    global _pa_instance
    with _pa_lock:
        if _pa_instance is None:
            with _quiet_stderr():
                _pa_instance = pyaudio.PyAudio()
        return _pa_instance


def _forget_pa_if_empty(pa: pyaudio.PyAudio) -> None:
    """Drop an instance that found no devices, so the next call probes again.

    PortAudio's device list is frozen at initialisation; if the sound server was not up yet,
    keeping that instance would hide devices for the life of the process. An instance with
    no devices cannot have open streams, so terminating it is safe.
    """
    global _pa_instance
    with _pa_lock:
        terminate = pa.terminate
        if _pa_instance is pa:
            _pa_instance = None
            with contextlib.suppress(Exception):
                terminate()


def _no_devices_hint() -> str:
    if os.environ.get("PULSE_SERVER"):
        return (
            f"is the PulseAudio server at PULSE_SERVER={os.environ['PULSE_SERVER']} running, "
            "and was it up before this process first used audio?"
        )
    return "no sound card is visible and PULSE_SERVER is not set (see scripts/audio-rig)"


def list_devices() -> tuple[list[DeviceInfo], str | None]:
    """All devices PortAudio knows, plus a reason when there are none. Never raises.

    The reason matters more than the empty list: on a server the usual answer to "why can't
    I pick a microphone" is "there is no sound server", and the API should say so.
    """
    try:
        pa = shared_pa()
    except Exception as exc:
        return [], f"PyAudio failed to initialise: {exc}"
    devices: list[DeviceInfo] = []
    try:
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            try:
                host_api = str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"])
            except Exception:
                host_api = "unknown"
            devices.append(
                DeviceInfo(
                    index=int(info["index"]),
                    name=str(info["name"]),
                    host_api=host_api,
                    max_input_channels=int(info["maxInputChannels"]),
                    max_output_channels=int(info["maxOutputChannels"]),
                    default_sample_rate=float(info["defaultSampleRate"]),
                )
            )
    except Exception as exc:
        return [], f"PortAudio found no devices: listing failed: {exc}"
    if not devices:
        try:
            apis = ", ".join(
                str(pa.get_host_api_info_by_index(i)["name"])
                for i in range(pa.get_host_api_count())
            )
        except Exception:
            apis = "unknown"
        _forget_pa_if_empty(pa)
        return [], f"PortAudio found no devices (host APIs: {apis or 'none'}): {_no_devices_hint()}"
    return devices, None


def _listing(devices: list[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind) > 0]
    if not usable:
        return f"there are no {kind} devices"
    return f"{kind} devices: " + "; ".join(d.describe() for d in usable)


def resolve(spec: str | int, kind: Kind) -> DeviceInfo:
    """Find the device a user or config file means by ``spec``, fit for ``kind``.

    ``spec`` is an index (int or digit string) or a name: an exact name wins, else a unique
    case-insensitive substring. Substring matches are narrowed to devices that can do
    ``kind``, so "mic_a" finds the capture device even when a playback device shares the
    stem. Raises DeviceError with a message that lists what would work.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', not {kind!r}")
    devices, reason = list_devices()
    if not devices:
        raise DeviceError(f"{kind} device {spec!r} is not available: {reason}")

    def usable(d: DeviceInfo) -> DeviceInfo:
        if d.channels(kind) > 0:
            return d
        raise DeviceError(
            f"{kind} device {spec!r} resolved to {d.describe()}, which has no {kind} "
            f"channels; {_listing(devices, kind)}"
        )

    if isinstance(spec, bool):  # bool is an int; True is never a device
        raise DeviceError(f"{kind} device {spec!r} is not an index or a name")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        for d in devices:
            if d.index == index:
                return usable(d)
        raise DeviceError(f"no {kind} device with index {index}; {_listing(devices, kind)}")

    name = str(spec).strip()
    if not name:
        raise DeviceError(f"empty {kind} device name; {_listing(devices, kind)}")
    exact = [d for d in devices if d.name == name]
    if len(exact) == 1:
        return usable(exact[0])
    if len(exact) > 1:
        fit = [d for d in exact if d.channels(kind) > 0]
        if len(fit) == 1:
            return fit[0]
        candidates = "; ".join(d.describe() for d in (fit or exact))
        raise DeviceError(
            f"{kind} device name {name!r} is ambiguous: several devices have exactly this "
            f"name ({candidates}); use an index instead"
        )

    matches = [d for d in devices if name.lower() in d.name.lower()]
    if not matches:
        raise DeviceError(f"no {kind} device matches {name!r}; {_listing(devices, kind)}")
    fit = [d for d in matches if d.channels(kind) > 0]
    if len(fit) == 1:
        return fit[0]
    if len(fit) > 1:
        raise DeviceError(
            f"{kind} device name {name!r} is ambiguous: it matches "
            + "; ".join(d.describe() for d in fit)
            + "; use the full name or an index"
        )
    if len(matches) == 1:
        return usable(matches[0])
    raise DeviceError(
        f"{kind} device name {name!r} matches only devices with no {kind} channels ("
        + "; ".join(d.describe() for d in matches)
        + f"); {_listing(devices, kind)}"
    )


def default_device(kind: Kind) -> DeviceInfo:
    """PortAudio's default device for ``kind`` (the ``"default"`` spec in the API).

    On Linux this is usually ALSA's "default", which PulseAudio/PipeWire take over when they
    run. Raises DeviceError when there is none.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', not {kind!r}")
    devices, reason = list_devices()
    if not devices:
        raise DeviceError(f"no default {kind} device: {reason}")
    try:
        pa = shared_pa()
        info = (
            pa.get_default_input_device_info()
            if kind == "input"
            else pa.get_default_output_device_info()
        )
        index = int(info["index"])
    except Exception as exc:  # PyAudio raises OSError/IOError when there is no default
        raise DeviceError(f"no default {kind} device ({exc}); {_listing(devices, kind)}") from None
    for d in devices:
        if d.index == index and d.channels(kind) > 0:
            return d
    raise DeviceError(f"the default {kind} device is unusable; {_listing(devices, kind)}")
