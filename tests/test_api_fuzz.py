"""schemathesis against /openapi.json on the real app and a real Node (see tests/api_fuzz.py
for the checks and the steering): no 5xx ever, and every response conforms to the status
codes, content types, headers and bodies the document declares.

CI budget: 40 derandomized examples per operation and mode (the same cases every run, so a
red CI is a regression, not luck); scripts/fuzz_api runs a bigger, random budget.
"""

from __future__ import annotations

import pytest
from api_fuzz import fuzz_api, node_env


@pytest.fixture
def node(node_factory):
    return node_factory(**node_env())


def test_api_conforms_to_its_openapi_document(node):
    totals = fuzz_api(node, max_examples=40)
    assert totals.operations >= 7
    # The fuzzer reached the success paths, not only the refusals.
    assert totals.statuses["POST /sessions"][201] > 0
    assert totals.statuses["GET /sessions/{call_id}"][200] > 0
    assert totals.statuses["DELETE /sessions/{call_id}"][200] > 0
    assert totals.statuses["GET /sessions/{call_id}/transcript"][200] > 0
    # The token is enforced and documented: negative cases that drop it get a 401.
    assert totals.statuses["GET /sessions"][401] > 0
