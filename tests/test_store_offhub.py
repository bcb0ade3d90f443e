"""The node's store runs its queries off the hub: a commit that has to wait (for the disk,
or for SQLite's write lock) holds up only the greenlet that asked for it."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import gevent

from service.store.db import Store
from service.store.offhub import OffHub
from service.vocab import Segment, Speaker

LOCK_HELD_S = 1.0


def test_a_commit_waiting_on_the_database_does_not_stall_the_hub(tmp_path) -> None:
    path = tmp_path / "node.db"
    threads = OffHub(Store(f"sqlite:///{path}"))
    store = threads.proxy
    store.upgrade()
    call_id = uuid.uuid4().hex
    store.add_call(id=call_id, mode="dial", state="connected")
    # Another process's transaction holds the write lock (a backup, an operator's sqlite3
    # shell): SQLite makes our commit wait for it, up to the busy timeout.
    locker = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    threading.Timer(LOCK_HELD_S, locker.rollback).start()
    segment = Segment(0.0, 1.0, "hello", speaker=Speaker.LOCAL, number=0)
    writer = gevent.spawn(store.add_segment, call_id, segment)
    ticks, started = 0, time.monotonic()
    longest = 0.0
    while time.monotonic() - started < LOCK_HELD_S * 0.8:
        before = time.monotonic()
        gevent.sleep(0.01)
        longest = max(longest, time.monotonic() - before)
        ticks += 1
    assert longest < 0.2, f"the hub stalled for {longest:.2f} s while a commit waited"
    assert not writer.ready(), "the commit should still be waiting for the lock"
    assert writer.get(timeout=10) is not None  # stored once the lock was let go
    assert [r.text for r in store.segments(call_id)] == ["hello"]
    threads.close()


def test_errors_of_a_query_reach_the_caller(tmp_path) -> None:
    threads = OffHub(Store(f"sqlite:///{tmp_path / 'node.db'}"))
    store = threads.proxy
    store.upgrade()
    try:
        store.update_call("no-such-call", state="ended")
    except KeyError:
        pass
    else:
        raise AssertionError("updating an unknown call should fail as the plain store does")
    threads.close()
