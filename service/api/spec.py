"""The single declaration behind request validation and /openapi.json (spectree+pydantic).

Validation failures are turned into our error shape here: malformed JSON is told apart
from a well-formed body that breaks the schema, both as 400.
"""

from __future__ import annotations

from typing import Any

from spectree import SecurityScheme, SecuritySchemeData, SpecTree

from service.api.errors import ApiError
from service.api.schemas import ErrorBody


def before_validation(req: Any, resp: Any, error: Exception | None, instance: Any, adapter: Any):
    # spectree validates a missing or unparsable body as {}; say what is really wrong.
    if req.method in ("POST", "PUT", "PATCH") and not req.get_data():
        raise ApiError(400, "malformed_json", "request body must be a JSON object")
    if req.get_data() and not req.is_json:
        raise ApiError(
            400, "malformed_json", "send the body as JSON with Content-Type: application/json"
        )
    if req.get_data() and req.get_json(silent=True) is None:
        raise ApiError(400, "malformed_json", "request body is not valid JSON")
    if error is not None:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg")}
            for e in adapter.validation_errors(error)
        ]
        summary = "; ".join(f"{d['field'] or 'request'}: {d['problem']}" for d in details)
        raise ApiError(400, "invalid_request", summary or "invalid request", details)


spec = SpecTree(
    "flask",
    title="IntelliMeet Audio call node",
    version="0.1.0",
    path="apidoc",
    before=before_validation,
    validation_error_status=400,
    # before_validation turns every validation failure into our error shape, so that is
    # the 400 the document declares (spectree's default is its own error list).
    validation_error_model=ErrorBody,
    annotations=True,
    security_schemes=[
        SecurityScheme(name="bearer", data=SecuritySchemeData(type="http", scheme="bearer")),
    ],
    # Required when the node has IM_API_TOKEN set; /healthz never needs it.
    security={"bearer": []},
)


def openapi_document() -> dict[str, Any]:
    """spectree's document, plus the 401 that the bearer guard (a before_request hook,
    which spectree cannot see) answers on every operation that requires the token."""
    doc = spec.spec
    schemas = doc.get("components", {}).get("schemas", {})
    error_ref = next(
        (f"#/components/schemas/{n}" for n in schemas if n.startswith("ErrorBody")), None
    )
    if error_ref is None:  # pragma: no cover - ErrorBody is declared by several routes
        return doc
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or operation.get("security") == []:
                continue
            operation.setdefault("responses", {}).setdefault(
                "401",
                {
                    "description": "Unauthorized: IM_API_TOKEN is set and the request did not "
                    "carry it as 'Authorization: Bearer ...'",
                    "content": {"application/json": {"schema": {"$ref": error_ref}}},
                },
            )
    return doc
