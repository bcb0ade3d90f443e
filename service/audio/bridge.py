"""Handing data from native threads (PortAudio callbacks) to greenlets.

A PortAudio callback runs on PortAudio's own OS thread. It must never block and must never
touch gevent objects, which belong to the hub's thread. The only gevent call that is safe
from a foreign thread is ``async_.send()``, so the callback appends to a bounded deque
(atomic under the GIL) and pokes an async watcher; a greenlet waits on the watcher.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import gevent
from gevent.event import Event

T = TypeVar("T")


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
