"""Both sides as one stereo file (local left, remote right), made by ffmpeg and cached.

A player wants one file to seek in; the two sides are kept apart on disk because the
post-call pass transcribes each on its own. The mix is made on the first request and kept
beside them (``both.opus``) until a side changes (a live call, or a trimmed tail), so a
player's range requests all read the same bytes. Each side is padded with silence to the
longer one, both starting at time 0 of the call.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from service.recordings.layout import STEREO, list_recordings, recording_path

MIX_BITRATE = "48k"  # two channels of the calls' 16-24 kbit/s speech, re-encoded once
LIVE_REMIX_S = 10.0
MIX_TIMEOUT_S = 120.0  # ffmpeg mixes an hour of call in a few seconds


class MixError(RuntimeError):
    """The stereo file could not be made (no recording, no ffmpeg, ffmpeg failed)."""


def stereo(root: Path, call_id: str, live: bool = False, ffmpeg: str | None = None) -> Path:
    """The stereo mix of the call's two recordings, made now if missing or stale. A live
    call's sides grow every second: its mix is remade at most every LIVE_REMIX_S, so the
    range requests of one player read one file."""
    sides = {r.speaker: r for r in list_recordings(root, call_id)}
    if set(sides) != {"local", "remote"}:
        raise MixError("the call has no recording of both sides")
    out = recording_path(root, call_id, STEREO)
    newest = max(os.stat(r.path).st_mtime_ns for r in sides.values())
    if out.exists():
        made = out.stat().st_mtime_ns
        if made >= newest or (live and time.time_ns() - made < LIVE_REMIX_S * 1e9):
            return out
    binary = ffmpeg or shutil.which("ffmpeg")
    if binary is None:
        raise MixError("ffmpeg is not installed (Debian/Ubuntu: apt-get install ffmpeg)")
    duration = max(r.duration_s for r in sides.values())
    tmp = out.with_suffix(f".{secrets.token_hex(4)}.tmp")  # two requests may mix at once
    cmd = [
        binary, "-nostdin", "-v", "error", "-y",
        "-i", str(sides["local"].path), "-i", str(sides["remote"].path),
        "-filter_complex",
        "[0:a]apad[l];[1:a]apad[r];[l][r]join=inputs=2:channel_layout=stereo[a]",
        "-map", "[a]", "-t", f"{duration:.3f}",
        "-c:a", "libopus", "-b:a", MIX_BITRATE, "-f", "ogg", str(tmp),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=MIX_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise MixError(f"ffmpeg could not run: {exc}") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise MixError(f"ffmpeg failed: {why[-1] if why else done.returncode}")
    os.replace(tmp, out)
    return out
