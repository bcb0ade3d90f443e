"""/healthz, /devices and /openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from spectree import Response as Resp

from service.api.schemas import DeviceList, Health
from service.api.spec import openapi_document, spec

bp = Blueprint("system", __name__)


@bp.get("/healthz")
@spec.validate(resp=Resp(HTTP_200=Health, HTTP_503=Health), tags=["system"], security={})
def healthz():
    """Liveness and readiness: 200 once the model is loaded and the store takes writes;
    503 while the model loads (`loading`) or while the last write to the store failed
    (`storage_failed`, with the reason in `storage_error`, until a write succeeds again)."""
    node = current_app.extensions["intellimeet.node"]
    engine = node.engine
    loaded = engine is not None and engine.loaded
    storage_error = node.store.write_error
    status = "ok" if loaded or engine is None else "loading"
    if storage_error is not None:
        status = "storage_failed"
    body = {
        "status": status,
        "model": node.settings.model if engine is not None else "none",
        "model_loaded": loaded,
        "device": engine.device if engine is not None else None,
        "live_calls": len(node.registry.live()),
        "storage_error": storage_error,
    }
    return jsonify(body), 200 if body["status"] == "ok" else 503


@bp.get("/devices")
@spec.validate(resp=Resp(HTTP_200=DeviceList), tags=["system"])
def devices():
    """PortAudio inputs and outputs; empty lists and a reason where there are none."""
    from service.audio.devices import list_devices

    found, reason = list_devices()
    return jsonify(
        {
            "inputs": [d.to_json() for d in found if d.max_input_channels > 0],
            "outputs": [d.to_json() for d in found if d.max_output_channels > 0],
            "reason": reason,
        }
    )


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document, generated from the same models that validate requests."""
    return jsonify(openapi_document())
