"""Retention: recordings older than IM_RECORDING_RETENTION_DAYS are deleted for good.

A recording's age is the time of its last write (the call's end, for a finished call), read
from the files themselves, so the sweep needs no query and also finds the folders of calls
whose rows are gone. A call that is still recording writes every second and is never old;
the caller passes the live calls anyway, so they are skipped whatever their clocks say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path

import gevent

from service.recordings.layout import delete_recordings, recorded_calls

log = logging.getLogger(__name__)

DAY_S = 86_400.0
SWEEP_EVERY_S = 3_600.0  # how often a node looks for expired recordings


def expired(root: Path, days: int, now: float | None = None) -> list[str]:
    """Call ids whose recordings were last written more than ``days`` ago (0: none)."""
    if days <= 0:
        return []
    cutoff = (time.time() if now is None else now) - days * DAY_S
    return sorted(call_id for call_id, mtime in recorded_calls(root) if mtime < cutoff)


def sweep(root: Path, days: int, live: Collection[str] = (), now: float | None = None) -> list[str]:
    """Delete every expired recording but those of ``live`` calls; the ids deleted."""
    gone = []
    for call_id in expired(root, days, now):
        if call_id in live:
            continue
        try:
            delete_recordings(root, call_id)
        except OSError as exc:
            log.warning("retention: cannot delete the recording of call %s: %s", call_id, exc)
            continue
        gone.append(call_id)
    if gone:
        log.info(
            "retention: deleted the recordings of %d call(s) older than %d days", len(gone), days
        )
    return gone


def keep_sweeping(
    root: Path,
    days: int,
    live: Callable[[], Collection[str]],
    on_deleted: Callable[[str], None],
    every_s: float = SWEEP_EVERY_S,
) -> None:
    """A greenlet's life: sweep now (a node's start), then every ``every_s``. The file work
    runs on gevent's thread pool; ``on_deleted`` (the store's note) on the hub."""
    while True:
        try:
            gone = gevent.get_hub().threadpool.apply(sweep, (root, days, set(live())))
        except Exception:  # a sweep that failed must not end retention for good
            log.exception("retention: the sweep failed; trying again in %.0f s", every_s)
            gone = []
        for call_id in gone:
            try:
                on_deleted(call_id)
            except Exception:
                log.exception("retention: cannot note the deletion on call %s", call_id)
        gevent.sleep(every_s)
