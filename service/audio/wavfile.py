"""WAV files as call audio, and the media folder (``IM_MEDIA_DIR``) they must live in.

Reading: any PCM16 rate or channel count, out comes 16 kHz mono.

Confinement: a `file:` input or output comes from an API caller, who must reach nothing but
the media folder, so a path is resolved here component by component from a descriptor of
that folder, each component opened with ``O_NOFOLLOW`` relative to the one before
(``openat``): no ``..``, no absolute path outside the folder, no symbolic link anywhere
below it, dangling or not. The descriptor that is checked is the one that is used, so a
symlink swapped in after the check is never followed, and an output is created with
``O_CREAT | O_EXCL``, so an existing file is never truncated.
"""

from __future__ import annotations

import errno
import os
import stat
import wave
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import soxr

from service.frames import SAMPLE_RATE

# Longer than any real path (Linux's PATH_MAX), and a bound on the openat() calls one
# request can cost: a megabyte of "a/a/a/..." must not walk half a million directories.
MAX_PATH_CHARS = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class AudioFileError(ValueError):
    """The file cannot serve as call audio; the message says why."""


class MediaPathError(ValueError):
    """A `file:` path refused by the media folder's rules. The message is the precise
    reason, for the node's log only: the caller is told one text for every refusal."""


def read_wav(source: str | Path | BinaryIO) -> np.ndarray:
    """Whole file as int16 mono at 16 kHz (the call's rate), resampled if needed.

    ``source`` is a trusted path (scripts, tests) or an open binary file (a media file
    opened by ``open_media_input``; it is read, not closed)."""
    if isinstance(source, str | Path):
        source = Path(source)
        shown = str(source)
        if not source.is_file():
            raise AudioFileError(f"no such file: {source}")
        opened: str | BinaryIO = str(source)
    else:
        opened, shown = source, "media file"
    try:
        with wave.open(opened, "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioFileError(f"{shown}: only 16-bit PCM WAV is supported")
            channels, rate = w.getnchannels(), w.getframerate()
            if not 1000 <= rate <= 384_000:
                raise AudioFileError(f"{shown}: sample rate {rate} Hz is not audio")
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioFileError(f"{shown}: not a readable WAV file ({exc})") from None
    if channels > 1:
        data = data[: data.size - data.size % channels]
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != SAMPLE_RATE:
        data = soxr.resample(data, rate, SAMPLE_RATE)
    return np.ascontiguousarray(data, dtype=np.int16)


def media_parts(media_dir: Path, raw: str) -> tuple[str, ...]:
    """The components of `raw` below ``media_dir`` (which is absolute and resolved).

    Relative paths are relative to the folder; an absolute one is accepted only when it
    names something inside it (compared as text: the folder was resolved once, at start).
    Nothing here touches the file system; ``open_in_media`` does, without following links.
    """
    if not raw:
        raise MediaPathError("empty path")
    if len(raw) > MAX_PATH_CHARS:
        raise MediaPathError(f"path longer than {MAX_PATH_CHARS} characters")
    if "\x00" in raw:
        raise MediaPathError("path contains NUL")
    path = PurePosixPath(raw)
    if path.is_absolute():
        try:
            path = path.relative_to(PurePosixPath(media_dir))
        except ValueError:
            raise MediaPathError(f"absolute path outside the media folder {media_dir}") from None
    parts = path.parts
    if ".." in parts:
        raise MediaPathError("'..' component")
    if not parts:
        raise MediaPathError("names the media folder itself")
    return parts


def open_in_media(media_dir: Path, raw: str, flags: int, mode: int = 0o666) -> int:
    """A descriptor for `raw` inside ``media_dir``, opened with `flags` (``O_NOFOLLOW``
    added), every directory on the way opened relative to the last with ``O_NOFOLLOW``.

    Raises MediaPathError (the precise reason) for a path the rules refuse or that cannot
    be opened: missing, a symlink at any depth, not a directory, no permission."""
    parts = media_parts(media_dir, raw)
    try:
        dir_fd = os.open(media_dir, _DIR_FLAGS)
    except OSError as exc:
        raise MediaPathError(f"media folder {media_dir} cannot be opened: {exc}") from None
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as exc:
                where = "/".join(parts[: i + 1])
                raise MediaPathError(f"folder {where!r}: {_why(exc)}") from None
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            raise MediaPathError(f"file {'/'.join(parts)!r}: {_why(exc)}") from None
    finally:
        os.close(dir_fd)


def open_media_input(media_dir: Path, raw: str) -> BinaryIO:
    """An existing regular file inside the media folder, open for reading.

    ``O_NONBLOCK`` so that a FIFO put there cannot block the hub in open(); anything but a
    regular file (FIFO, device, directory) is then refused from the descriptor itself."""
    fd = open_in_media(media_dir, raw, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaPathError(f"{raw!r} is not a regular file (mode {info.st_mode:o})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def create_media_output(media_dir: Path, raw: str) -> BinaryIO:
    """A new file inside the media folder, open for writing (``O_CREAT | O_EXCL``: a file,
    or a link, already at that name is refused and left as it was)."""
    fd = open_in_media(media_dir, raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _why(exc: OSError) -> str:
    """The log's reason: with O_NOFOLLOW a symlink reads as ELOOP (a file), ENOTDIR (a
    folder on the way) or EEXIST (an output name), which strerror alone would hide."""
    hint = {
        errno.ELOOP: " (a symbolic link)",
        errno.ENOTDIR: " (a symbolic link, or not a folder)",
        errno.EEXIST: " (a file or symbolic link is already there)",
    }.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{hint}"
