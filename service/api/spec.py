"""The single declaration behind request validation and /openapi.json (spectree+pydantic).

Validation failures are turned into our error shape here: malformed JSON is told apart
from a well-formed body that breaks the schema, both as 400.
"""

from __future__ import annotations

from typing import Any

from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import SecureType

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
        SecurityScheme(
            name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer")
        ),
    ],
    # Required when the node has IM_API_TOKEN set; /healthz never needs it.
    security={"bearer": []},
)


def openapi_document() -> dict[str, Any]:
    """spectree's document, plus what the before_request hooks (which spectree cannot see)
    answer: 421 for a foreign Host and 403 for a cross-origin write on every operation
    (service.api.guard), 503 when the event feeds are all taken, and the 401 of the
    bearer guard on every operation that requires the token."""
    doc = spec.spec
    schemas = doc.get("components", {}).get("schemas", {})
    error_ref = next(
        (f"#/components/schemas/{n}" for n in schemas if n.startswith("ErrorBody")), None
    )
    if error_ref is None:  # pragma: no cover - ErrorBody is declared by several routes
        return doc

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": error_ref}}},
        }

    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault(
                "421",
                error(
                    "Misdirected Request: the Host header names none of this node's host "
                    "names (see IM_API_ALLOWED_HOSTS)"
                ),
            )
            if method.upper() not in ("GET", "HEAD", "OPTIONS"):
                responses.setdefault(
                    "403",
                    error(
                        "Forbidden: a request that changes state came from another origin "
                        "(Origin or Sec-Fetch-Site); nothing was changed"
                    ),
                )
            if path.endswith("/events"):
                responses.setdefault(
                    "503", error("Service Unavailable: every event feed slot is taken")
                )
            if operation.get("security") == []:
                continue
            responses.setdefault(
                "401",
                error(
                    "Unauthorized: IM_API_TOKEN is set and the request did not "
                    "carry it as 'Authorization: Bearer ...'"
                ),
            )
    return doc
