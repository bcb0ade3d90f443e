"""The node's store, with every query run on a small pool of OS threads instead of the hub.

A commit is a disk flush (SQLite with synchronous=FULL fsyncs its log before it returns, so
that a segment is durable before anyone is told of it): measured here at 5-25 ms each. Run
on the hub, every one of those milliseconds stops every call's audio, every socket and every
API answer at once, and a peer that sends segments as fast as its budget allows turns that
into a stream of stalls (issue 10: /healthz at 140-165 ms under a transcript flood). Here
the greenlet that asked waits for its own query, as it did before, and everything else runs
meanwhile: one caller's writes still happen in its order, and "durable before reported"
holds because the caller goes on only once the commit has returned.

SQLite lets readers run beside its one writer (WAL) and makes a second writer wait on its
lock (the engine's 30 s busy timeout); PostgreSQL serves the threads as it serves a fleet.
Called from a thread that is not the hub's (the post-call pass, a recorder), a query runs
right there: gevent's pool does that by itself. What a query calls back (the outbox's
``wake``) therefore runs on a pool thread: gevent's Event.set is safe from there.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from gevent.threadpool import ThreadPool

STORE_THREADS = 4  # concurrent queries; more only queue on SQLite's single writer anyway

# What stays on the caller: the context managers, which hand out a Session to use in place.
ON_CALLER = frozenset({"session", "writing"})

T = TypeVar("T")


class OffHub(Generic[T]):
    """Wraps an object that queries the database (the `Store`, its webhook outbox): its
    methods run on the pool and block only the calling greenlet; its other attributes are
    its own, read and set through the wrapper."""

    def __init__(self, target: T, pool: ThreadPool | None = None) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "pool", pool if pool is not None else ThreadPool(STORE_THREADS))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name.startswith("_") or name in ON_CALLER or not callable(attr):
            return attr
        pool = self.pool

        def run(*args: Any, **kwargs: Any) -> Any:
            return pool.apply(attr, args, kwargs)

        run.__name__ = name
        run.__doc__ = attr.__doc__
        return run

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)  # e.g. the outbox's ``wake`` callback

    @property
    def proxy(self) -> T:
        """This wrapper, typed as what it wraps: callers (and the type checker) see the
        same methods with the same signatures."""
        return cast(T, self)

    def close(self) -> None:
        """End the pool's threads (each after its current query)."""
        self.pool.kill()
