"""A call's live events (state changes, partials, finals), fanned out to live listeners.

Only finals are durable (they are rows in the store), so only finals carry an event id:
a listener that reconnects with ``Last-Event-ID`` gets the finals it missed from the
store, and partials and states simply carry on live. Each listener has a bounded queue;
one that cannot keep up is cut off (and can resume) rather than growing memory or
slowing the call.

Everything here runs on the gevent hub (gevent queues are not thread-safe): publish from
a greenlet, never from a PortAudio or Whisper thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from gevent.queue import Full, Queue

from service.vocab import CallState, Segment, Speaker

log = logging.getLogger(__name__)

LISTENER_QUEUE = 256  # events one listener may be behind before it is cut off


class EventKind(StrEnum):
    STATE = "state"
    PARTIAL = "partial"
    FINAL = "final"


@dataclass(frozen=True, slots=True)
class StateChange:
    state: CallState
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Partial:
    """An open utterance's text so far: live only, never stored."""

    speaker: Speaker
    utterance: int
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Final:
    """A stored segment; ``utterance`` ties it to its partials (live only: not stored)."""

    segment: Segment
    id: int  # its row id, which is also the live feed's event id
    utterance: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    data: StateChange | Partial | Final
    id: int | None = None  # the stored segment id, for finals only


class Listener:
    def __init__(self, bus: EventBus, maxsize: int, label: str) -> None:
        self._bus = bus
        self.label = label
        self.queue: Queue[Event | None] = Queue(maxsize=maxsize)
        self.cut_off = False

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when the bus closed or this listener was cut off.
        Raises gevent.queue.Empty on timeout."""
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        """Stop receiving (idempotent); what is still queued is dropped with the listener."""
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, max_queued: int = LISTENER_QUEUE) -> None:
        self._max_queued = max_queued
        self._listeners: list[Listener] = []
        self.closed = False
        self.listeners_cut_off = 0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def subscribe(self, label: str = "listener") -> Listener:
        """A new listener sees every event published from now on; on a closed bus it
        gets the end of its stream at once."""
        listener = Listener(self, self._max_queued + 1, label)  # room for the closing None
        if self.closed:
            listener.queue.put_nowait(None)
        else:
            self._listeners.append(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, data: StateChange | Partial | Final) -> None:
        """Never blocks: a listener whose queue is full is cut off instead."""
        if isinstance(data, Final):
            event = Event(EventKind.FINAL, data, data.id)
        else:
            event = Event(
                EventKind.STATE if isinstance(data, StateChange) else EventKind.PARTIAL, data
            )
        for listener in list(self._listeners):
            if listener.queue.qsize() >= self._max_queued:
                self._cut_off(listener)
                continue
            try:
                listener.queue.put_nowait(event)
            except Full:  # pragma: no cover - the size check above leaves room
                self._cut_off(listener)

    def _cut_off(self, listener: Listener) -> None:
        self.listeners_cut_off += 1
        listener.cut_off = True
        self.unsubscribe(listener)
        listener.queue.put_nowait(None)
        log.warning(
            "cut off %s: it fell %d events behind (it may resume)",
            listener.label,
            self._max_queued,
        )

    def close(self) -> None:
        """The call is over: every listener gets the end of its stream."""
        self.closed = True
        for listener in self._listeners:
            listener.queue.put_nowait(None)
        self._listeners.clear()
