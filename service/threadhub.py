"""Handing data between native OS threads and the gevent hub.

Two kinds of native thread run beside the hub: PortAudio's callbacks (capture, playback)
and the ASR worker (Whisper, which releases the GIL). Neither may block on, or even touch,
a gevent object: those belong to the hub's thread, and under monkey-patching even
``threading.Lock`` is one. So:

- ``native_lock()`` is a real OS lock (never gevent's), for state shared with such a thread;
  hold it for bookkeeping only, never across I/O.
- ``start_native_thread()`` starts a real OS thread even in a monkey-patched process.
- ``off_hub()`` runs blocking work (file scans, fsyncs) on gevent's thread pool, for a
  greenlet to wait on cooperatively.
- ``ThreadToHub`` carries items from any thread to one greenlet: the only gevent call that is
  safe from a foreign thread is ``async_.send()``, so the producer appends to a bounded deque
  (atomic under the GIL) and pokes an async watcher; the greenlet waits on the watcher.

This module imports nothing of the node's own: audio and ASR both sit on top of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event
from gevent.monkey import get_original

T = TypeVar("T")


def off_hub(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on gevent's thread pool; the calling greenlet waits, the hub does not."""
    result: T = gevent.get_hub().threadpool.apply(fn, args)
    return result


def native_lock() -> Any:
    """A new OS lock, even after gevent's monkey-patching (which replaces ``threading``'s)."""
    return get_original("_thread", "allocate_lock")()


def start_native_thread(target: Callable[[], object]) -> None:
    """Run `target` on a new OS thread, not a greenlet, even in a monkey-patched process."""
    get_original("_thread", "start_new_thread")(target, ())


class ThreadToHub(Generic[T]):
    """A bounded single-consumer queue fed from any thread and drained by one greenlet.

    When the consumer falls behind, the oldest item is dropped (and counted): for live
    audio a late frame is worth less than a fresh one, and memory stays bounded.
    """

    def __init__(self, maxlen: int) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self.dropped = 0
        self._hub = gevent.get_hub()
        self._watcher = self._hub.loop.async_()
        self._ready = Event()
        self._watcher.start(self._ready.set)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, item: T) -> None:
        """Safe from any thread; never blocks."""
        if len(self._items) >= self._maxlen:
            try:
                self._items.popleft()
                self.dropped += 1
            except IndexError:
                pass
        self._items.append(item)
        self._watcher.send()

    def get(self, timeout: float | None = None) -> T | None:
        """Wait (cooperatively) for the next item; None on timeout or after close()."""
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                pass
            if self._closed:
                return None
            self._ready.clear()
            if self._items:
                continue
            if not self._ready.wait(timeout):
                return None

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Wake the consumer for good. Call from the hub's thread."""
        self._closed = True
        self._ready.set()
        self._watcher.stop()
        self._watcher.close()
