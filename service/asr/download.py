"""Fetching an official checkpoint the way openai-whisper does, but never leaving half a file.

openai-whisper's own `_download` writes straight to the cache path, so a cut download leaves
a file that the next start finds and fails on (or, worse, a process loads it while another is
still writing). Here the bytes go to a temporary file beside the target, are hashed while they
arrive, and only a file whose SHA-256 matches the published one is renamed into place
(`os.replace`, atomic on one file system). Anything else deletes the temporary file.

Every wait is bounded: `timeout_s` covers connecting and each read, and the size is capped, so
a server that stalls or sends too much ends the download with an error instead of hanging
the node's start. Proxies come from the usual environment variables (urllib's default).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_TIMEOUT_S = 10.0
STALE_PART_S = 600.0


class DownloadError(RuntimeError):
    """The file could not be fetched intact; nothing was written at the target."""


def download(
    url: str,
    sha256: str,
    target: Path,
    *,
    max_bytes: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch `url` into `target` when its SHA-256 is `sha256`; return `target`.

    `max_bytes` bounds what is read (a server announcing or sending more is refused).
    `progress(received, total_or_None)` is called about every 5 % (or 64 MiB without a
    length). On any failure the temporary file is removed and DownloadError says why."""
    target = Path(target)
    _remove_stale_parts(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as e:
        raise DownloadError(f"cannot write into {target.parent}: {e}") from e
    tmp = Path(tmp_name)
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            digest, received = _fetch(url, out, max_bytes, timeout_s, progress)
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:
            raise DownloadError(
                f"{url}: SHA-256 of the {received} bytes received is {digest}, expected "
                f"{sha256}; the file was discarded"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the service may run as another user
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise DownloadError(f"cannot write {target}: {e}") from e
        raise
    log.info(
        "downloaded %s (%.1f MB, SHA-256 verified) in %.1f s",
        target,
        received / 1e6,
        time.monotonic() - started,
    )
    return target


def _remove_stale_parts(target: Path) -> None:
    """Delete what killed downloads of `target` left: a live download writes its part file
    at least every `timeout_s`, so one untouched for STALE_PART_S is nobody's."""
    now = time.time()
    for part in target.parent.glob(f".{target.name}.*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                log.info("removed %s, left by an interrupted download", part)


def _fetch(
    url: str,
    out,
    max_bytes: int,
    timeout_s: float,
    progress: Callable[[int, int | None], None] | None,
) -> tuple[str, int]:
    request = urllib.request.Request(url, headers={"User-Agent": "intellimeet-audio"})
    hasher = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total is not None and total.isdigit() else None
            if total is not None and total > max_bytes:
                raise DownloadError(f"{url}: the server offers {total} bytes, more than expected")
            step = max(CHUNK, (total or 0) // 20) if total else 64 * CHUNK
            next_report = step
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadError(f"{url}: more than {max_bytes} bytes; stopped")
                hasher.update(chunk)
                out.write(chunk)
                if progress is not None and received >= next_report:
                    progress(received, total)
                    next_report += step
            if total is not None and received != total:
                raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url}: {e.reason}") from e
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"{url}: connection closed after {received + len(e.partial)} bytes"
        ) from e
    except TimeoutError as e:
        raise DownloadError(f"{url}: no data for {timeout_s:g} s after {received} bytes") from e
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise DownloadError(f"{url}: transfer failed after {received} bytes: {e}") from e
    return hasher.hexdigest(), received
