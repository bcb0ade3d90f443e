"""schemathesis against the control API's own /openapi.json, shared by tests/test_api_fuzz.py
(CI budget) and scripts/fuzz_api (a bigger run that prints totals).

The app is the real Flask app over a real Node (SQLite, real listening sockets; only the
Whisper model is not loaded), called in-process through WSGI, with ``IM_API_TOKEN`` set as
in any deployment: positive cases carry the token, negative ones may drop it, and a 401 is
then what the document must promise.

Checks: every schemathesis check but ``positive_data_acceptance``, which expects any
schema-valid request to succeed. Here it cannot: the schema cannot know which sound
devices, WAV files and peer addresses exist (a valid-looking ``input`` that names no device
is a documented 422). Everything else applies, ``not_a_server_error`` and
``response_schema_conformance`` first.

Steering: random strings almost never name a usable device, so three in four positive
POST /sessions bodies get a real ``input``/``output`` and half of the ``{call_id}`` paths a
real call, so the success paths (201, a live call's snapshot, hang-up, transcripts) are
fuzzed too, not only the 4xx ones. Listening ports are always 0 (any free port): a fuzzer
binding arbitrary real ports on a shared machine would break whatever else runs there.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api import create_app
from service.localnodes import free_port
from service.node import Node

TOKEN = "fuzz-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Mostly usable (so calls get created), some not (a 422 each, on purpose).
INPUTS = ["silence", "silence", "tone:440", "tone:5", "default", "file:no-such.wav", 7]
OUTPUTS = [None, None, "null", "default", 3]
KEEP_CREATED = 8  # calls created by the fuzzer left open at once (IM_MAX_CALLS is 32)


def node_env() -> dict[str, str]:
    """The settings of the node under the fuzzer (besides helpers.start_node's own)."""
    return {
        "IM_API_TOKEN": TOKEN,
        "IM_CALL_PORT": str(free_port()),  # a listen that names no port
        "IM_HELLO_TIMEOUT_S": "1",
    }


def start_node(data_dir: Path) -> Node:
    return helpers.start_node(data_dir, **node_env())


@dataclass
class Known:
    """Real calls for the fuzzer to aim at: live ones, and ended ones (whose event feed
    ends; a live call's feed is an endless stream that a WSGI test client would wait on)."""

    live: list[dict[str, Any]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


def refresh_calls(client: Any, known: Known) -> None:
    """Two fresh listening calls for the next operation (the last one's were dialled, hung
    up or deleted by the fuzzer); the old ones are hung up and join the ended."""
    for call in known.live:
        client.delete(f"/sessions/{call['id']}", headers=AUTH)  # 409 if already ended
        known.ended.append(call["id"])
    listen = {"mode": "listen", "port": 0, "input": "silence", "output": None}
    known.live = [client.post("/sessions", json=listen, headers=AUTH).get_json() for _ in range(2)]


def steer(case: Any, data: st.DataObject, known: Known) -> None:
    body = case.body
    if case.method == "POST" and isinstance(body, dict):
        body = dict(body)
        if isinstance(body.get("port"), int) and 0 <= body["port"] <= 65535:
            body["port"] = 0
        if data.draw(st.integers(0, 3), label="steer body") > 0:
            body["input"] = data.draw(st.sampled_from(INPUTS), label="input")
            body["output"] = data.draw(st.sampled_from(OUTPUTS), label="output")
            body.pop("language", None)
            if body.get("mode") == "dial":
                call = data.draw(st.sampled_from(known.live), label="dial")
                body["peer"] = data.draw(
                    st.sampled_from([call["address"], "127.0.0.1:1", "nowhere.invalid:7000"])
                )
                body["token"] = data.draw(st.sampled_from([call["token"], "wrong"]))
                body.pop("port", None)
            else:
                body.pop("peer", None)
                body.pop("token", None)
                body["port"] = 0
        case.body = body
    params = case.path_parameters or {}
    if "call_id" in params and data.draw(st.booleans(), label="steer call_id"):
        live = [c["id"] for c in known.live]
        if case.path.endswith("/events") or not data.draw(st.booleans(), label="a live one"):
            ids = known.ended
        else:
            ids = live
        params["call_id"] = data.draw(st.sampled_from(ids), label="call_id")


def hang_up_all_but_a_few(client: Any, new_id: str, totals: Totals) -> None:
    """Keep the calls the fuzzer creates under IM_MAX_CALLS by hanging up the oldest, through
    the API: a 503 after that would mean a hung-up call still holds its place."""
    totals.created.append(new_id)
    while len(totals.created) > KEEP_CREATED:
        client.delete(f"/sessions/{totals.created.pop(0)}", headers=AUTH)


@dataclass
class Totals:
    operations: int = 0
    requests: int = 0
    statuses: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: list[str] = field(default_factory=list)
    no_negative: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)


def fuzz_api(
    node: Node,
    max_examples: int,
    seed: int | None = None,
    raise_failures: bool = True,
) -> Totals:
    """Every operation of /openapi.json, positive then negative cases. A failing check
    raises schemathesis' own report (with a curl line to reproduce) when
    ``raise_failures``; otherwise it is collected in ``Totals.failures``. Without a
    ``seed`` the cases are derandomized: the same every run."""
    app = create_app(node)
    client = app.test_client()
    known = Known()
    refresh_calls(client, known)
    refresh_calls(client, known)  # so that there are ended calls from the start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=AUTH)
    totals = Totals()
    for result in schema.get_all_operations():
        operation = result.ok()
        totals.operations += 1
        refresh_calls(client, known)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} ({mode.value})"

            run = _operation_test(operation, mode, known, totals, max_examples, seed, client)
            try:
                run()
            except Unsatisfiable:
                totals.no_negative.append(label)  # nothing to negate (/healthz has no inputs)
            except BaseException as exc:
                if raise_failures:
                    raise
                totals.failures.append(f"{label}: {exc}")
    return totals


def _operation_test(
    operation: Any,
    mode: GenerationMode,
    known: Known,
    totals: Totals,
    max_examples: int,
    seed: int | None,
    client: Any,
) -> Any:
    @settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        if mode is GenerationMode.POSITIVE:
            steer(case, data, known)
        # The token on every request; a negative case that is about the token replaces
        # or drops it itself (and then a documented 401 must come back).
        response = case.call(headers=AUTH)
        totals.requests += 1
        totals.statuses[operation.label][response.status_code] += 1
        if response.status_code == 201:
            hang_up_all_but_a_few(client, response.json()["id"], totals)
        case.validate_response(response, headers=AUTH, excluded_checks=[positive_data_acceptance])

    return run if seed is None else hypothesis.seed(seed)(run)
