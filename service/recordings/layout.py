"""Where recordings live, and what a call's recordings are: the one place that builds paths.

Layout under the recordings folder (``IM_RECORDINGS_DIR``, default ``DATA/recordings``)::

    <root>/<call id>/local.opus    this node's own speaker (its capture, as it sent it)
    <root>/<call id>/remote.opus   the peer, as this node received it
    <root>/<call id>/both.opus     stereo (local left), made on request and kept as a cache
    <root>/<call id>/local.flac    this node's own speaker again, lossless (IM_RECORD_LOSSLESS):
                                   what the post-call pass transcribes when it is there

Each is an Ogg Opus file whose time t is time t of the call's transcript (segment start
and end index into it). A file whose last page carries EOS was closed cleanly; one without
(the node was killed, or the disk filled) is *interrupted* and readable up to its last
whole page. Paths are built only from a call id that passed ``check_call_id`` (the node's
own 32-hex-digit ids) and a speaker from a fixed set: nothing a user types reaches a path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.recordings.ogg import Scan, scan

Speaker = Literal["local", "remote"]
SPEAKERS: tuple[Speaker, ...] = ("local", "remote")
STEREO = "both"
SUFFIX = ".opus"
LOSSLESS = "local.flac"  # FLAC, 16 kHz mono: sample n is time n / 16000 of the call
_CALL_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as the registry makes them
SCANS_KEPT = 256  # files whose scan is remembered (a few bytes each)


class BadCallId(ValueError):
    """Not a call id this node could have made: never turned into a path."""


def check_call_id(call_id: str) -> str:
    if not isinstance(call_id, str) or not _CALL_ID.fullmatch(call_id):
        raise BadCallId(f"not a call id: {call_id!r}")
    return call_id


def call_dir(root: Path, call_id: str) -> Path:
    return Path(root) / check_call_id(call_id)


def recording_path(root: Path, call_id: str, speaker: str) -> Path:
    """The file of one side of a call: ``speaker`` is ``local``, ``remote`` (or ``both``,
    the stereo mix's cache)."""
    if speaker not in (*SPEAKERS, STEREO):
        raise ValueError(f"speaker must be local, remote or both, got {speaker!r}")
    return call_dir(root, call_id) / f"{speaker}{SUFFIX}"


def lossless_path(root: Path, call_id: str) -> Path:
    """The local side's lossless copy (FLAC), written beside its Ogg Opus file."""
    return call_dir(root, call_id) / LOSSLESS


@dataclass(frozen=True)
class RecordingFile:
    """One side's recording as it is on disk now."""

    speaker: Speaker
    path: Path
    complete: bool  # closed cleanly (EOS); False: interrupted, readable up to valid_bytes
    size_bytes: int
    valid_bytes: int  # whole, CRC-correct pages from the start
    duration_s: float  # on the call's timeline
    # The same side lossless (local only, IM_RECORD_LOSSLESS), when it was kept: the
    # better input for a transcriber. The Ogg Opus file is what is served and mixed.
    lossless: Path | None = None

    @property
    def interrupted(self) -> bool:
        return not self.complete


def list_recordings(root: Path, call_id: str) -> list[RecordingFile]:
    """The call's recordings (local first), each scanned: complete or interrupted, how
    long. Empty when the call recorded nothing, or its recording was deleted. Reading a
    file's pages (about 3,600 an hour) is done once per version of the file (_scanned):
    call it from a thread or an ended call's work."""
    out = []
    for speaker in SPEAKERS:
        path = recording_path(root, call_id, speaker)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        s = _scanned(str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        flac = lossless_path(root, call_id) if speaker == "local" else None
        if flac is not None and not _nonempty_file(flac):
            flac = None
        out.append(
            RecordingFile(speaker, path, s.complete, st.st_size, s.valid_bytes, s.duration_s, flac)
        )
    return out


def _nonempty_file(path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


@functools.lru_cache(maxsize=SCANS_KEPT)
def _scanned(path: str, _ino: int, _size: int, _mtime_ns: int) -> Scan:
    """``scan`` of a file as it is: a player's range requests (one per seek) and the stereo
    mix ask for the same ended call's files again and again, and rescanning both sides
    each time read every page of an hour of call twice per request. Keyed by inode, size
    and modification time, so a file that grew, was trimmed or replaced is read again."""
    return scan(Path(path))


def trim_torn_tail(recording: RecordingFile) -> bool:
    """Cut an interrupted file back to its last whole page (a kill leaves half a page),
    so every reader (ffmpeg, a browser) sees a clean stream. Only for a call that is no
    longer recording. True if bytes were removed."""
    if recording.complete or recording.valid_bytes >= recording.size_bytes:
        return False
    with open(recording.path, "r+b") as f:
        f.truncate(recording.valid_bytes)
        f.flush()
        os.fsync(f.fileno())
    return True


def fsync_dir(path: Path) -> None:
    """Make a file's creation or removal in ``path`` durable (POSIX: fsync the folder)."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def delete_recordings(root: Path, call_id: str) -> bool:
    """Remove every file of the call's recording for good, durably. True if there was any."""
    folder = call_dir(root, call_id)
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    fsync_dir(Path(root))
    return True


def recorded_calls(root: Path) -> list[tuple[str, float]]:
    """(call id, when its recording was last written) of every call folder under
    ``root``; anything that is not a call's folder is left alone. The time is the newest of
    the sides' files: the stereo cache is made when someone plays the call, and playing it
    must not restart its retention (nor does the folder's own time, which that creation
    changes). A folder without either side counts from its own time."""
    out = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not (entry.is_dir(follow_symlinks=False) and _CALL_ID.fullmatch(entry.name)):
            continue
        written = []
        for name in (*(f"{speaker}{SUFFIX}" for speaker in SPEAKERS), LOSSLESS):
            with contextlib.suppress(FileNotFoundError):
                written.append(os.stat(Path(entry.path) / name).st_mtime)
        if not written:
            try:  # a folder deleted meanwhile (DELETE .../recording) is simply gone
                written.append(entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue
        out.append((entry.name, max(written)))
    return out
