"""A fleet of nodes on one database: IM_NODE_ID on every call, a restart that closes only
the restarting node's own open calls, listing by node, and migrations that two nodes
starting at once cannot break (a PostgreSQL advisory lock; an flock on SQLite).

The last test is the real thing: two node processes on one real PostgreSQL server, started
at once on an empty database; one is SIGKILLed and restarted while the other has a live call.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from alembic.script import ScriptDirectory
from helpers import PROCESS_ENV, ROOT, store_call, wait_until
from sqlalchemy import inspect, text

from service.config import ConfigError, load_settings, node_id_from_host
from service.localnodes import NodeProcess
from service.store.db import Store, alembic_config


def test_node_id_is_validated_and_defaults_to_the_host_name(tmp_path):
    base = {"IM_DATA_DIR": str(tmp_path)}
    assert load_settings({**base, "IM_NODE_ID": "gpu-7.eu_west"}).node_id == "gpu-7.eu_west"
    default = load_settings(base).node_id
    assert default == node_id_from_host() and default == load_settings(base).node_id  # stable
    for bad in ("has space", "ünïcode", "semi;colon", "x" * 65):
        with pytest.raises(ConfigError, match="IM_NODE_ID"):
            load_settings({**base, "IM_NODE_ID": bad})


def test_a_restart_closes_only_its_own_open_calls(database_url):
    a, b = Store(database_url, node_id="node-a"), Store(database_url, node_id="node-b")
    try:
        a.upgrade()
        store_call(a, "a-open")
        store_call(b, "b-open")
        store_call(b, "b-done", ended_at=b.get_call("b-open").created_at)
        with b.engine.begin() as conn:  # a call from before node ids (migration 0005)
            conn.execute(text("update calls set node_id = '' where id = 'b-done'"))
        store_call(b, "legacy-open", node_id="")
        assert b.mark_unfinished_calls("interrupted", "node_restarted") == 2
        states = {c.id: (c.node_id, c.state) for c in a.list_calls()}
        assert states == {
            "a-open": ("node-a", "listening"),  # another node's live call: untouched
            "b-open": ("node-b", "interrupted"),
            "b-done": ("", "listening"),  # ended already: left as it was
            "legacy-open": ("", "interrupted"),
        }
        assert [c.id for c in a.list_calls(node="node-a")] == ["a-open"]
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_sessions_show_and_filter_by_node(node_factory, database_url):
    from service.api import create_app

    node = node_factory(IM_DATABASE_URL=database_url, IM_NODE_ID="node-a")
    client = create_app(node).test_client()
    live = client.post(
        "/sessions", json={"mode": "listen", "port": 0, "input": "silence", "output": None}
    ).get_json()
    assert live["node_id"] == "node-a"
    other = Store(database_url, node_id="node-b")
    try:
        store_call(other, "theirs")
    finally:
        other.engine.dispose()

    def listed(**params) -> dict[str, str]:
        r = client.get("/sessions", query_string=params)
        assert r.status_code == 200, r.get_json()
        return {s["id"]: s["node_id"] for s in r.get_json()["sessions"]}

    assert listed() == {live["id"]: "node-a", "theirs": "node-b"}
    assert listed(node="node-b") == {"theirs": "node-b"}
    assert listed(node="node-a") == {live["id"]: "node-a"}
    assert client.get("/sessions/theirs").get_json()["node_id"] == "node-b"
    bad = client.get("/sessions", query_string={"node": "no spaces"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"


RACE = "import sys; from service.store.db import upgrade; upgrade(sys.argv[1])"


def test_nodes_migrating_an_empty_database_at_once_all_succeed(database_url):
    """Without the lock the losers of the race fail (duplicate tables, or a version row
    written twice); with it they wait and find the work done."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, database_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    store = Store(database_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        with store.engine.connect() as conn:
            assert conn.scalar(text("select version_num from alembic_version")) == head
            assert conn.scalar(text("select count(*) from alembic_version")) == 1
        assert {"calls", "segments"} <= set(inspect(store.engine).get_table_names())
    finally:
        store.engine.dispose()


@pytest.mark.slow
def test_two_nodes_on_one_postgresql_a_restart_leaves_the_other_live(
    tmp_path, model_dir, postgres_url
):
    a, b = (
        NodeProcess(
            name,
            tmp_path / name,
            env={**PROCESS_ENV, "IM_DATABASE_URL": postgres_url, "IM_NODE_ID": f"node-{name}"},
            model_dir=model_dir,
        )
        for name in ("a", "b")
    )
    try:
        # Both at once on an empty database: their migrations race.
        errors: list[BaseException] = []

        def start(node: NodeProcess) -> None:
            try:
                node.start()
            except BaseException as exc:  # reported below, with the node's log
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(n,)) for n in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        listen = {"mode": "listen", "port": 0, "input": "silence", "output": None}
        a_call = a.call("POST", "/sessions", 201, json=listen)
        b_call = b.call("POST", "/sessions", 201, json=listen)

        b.kill()
        b.restart()
        # B's own call, left open by the killed process, is closed...
        stale = b.call("GET", f"/sessions/{b_call['id']}")
        assert (stale["state"], stale["end_reason"]) == ("interrupted", "node_restarted")
        assert stale["node_id"] == "node-b"
        # ...and A's live call is untouched: still listening on A, open in the database.
        assert a.call("GET", f"/sessions/{a_call['id']}")["state"] == "listening"
        seen_from_b = b.call("GET", f"/sessions/{a_call['id']}")
        assert (seen_from_b["state"], seen_from_b["ended_at"]) == ("listening", None)
        assert seen_from_b["node_id"] == "node-a"
        fleet = {s["id"]: s["node_id"] for s in b.call("GET", "/sessions")["sessions"]}
        assert fleet == {a_call["id"]: "node-a", b_call["id"]: "node-b"}
        assert [s["id"] for s in b.call("GET", "/sessions?node=node-a")["sessions"]] == [
            a_call["id"]
        ]
        # It still takes its caller: the restarted B dials it and the call connects.
        dial = {"mode": "dial", "peer": a_call["address"], "token": a_call["token"]}
        b.call("POST", "/sessions", 201, json={**dial, "input": "silence", "output": None})
        wait_until(
            lambda: a.call("GET", f"/sessions/{a_call['id']}")["state"] == "connected" or None,
            20,
            "A's call to connect",
        )
    finally:
        a.kill()
        b.kill()
