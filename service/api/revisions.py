"""POST /sessions/<id>/transcript/revisions: run the post-call pass over an ended call's
recording again (service/calls/postcall.py), e.g. after changing IM_FINAL_MODEL."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from spectree import Response as Resp

from service.api import views
from service.api.errors import ApiError
from service.api.schemas import ErrorBody, NewRevision, PassOut
from service.api.spec import spec
from service.node import Node

bp = Blueprint("revisions", __name__)


@bp.post("/sessions/<call_id>/transcript/revisions")
@spec.validate(
    json=NewRevision,
    resp=Resp(HTTP_202=PassOut, HTTP_404=ErrorBody, HTTP_409=ErrorBody),
    tags=["sessions"],
)
def new_revision(call_id: str, json: NewRevision):
    """Queue a post-call pass that makes the call's final revision anew (202, the pass);
    the body is `{}`.

    409 while the call is live (its pass is queued when it ends), when it has no recording
    on this node, or while a pass of it is pending or running. Follow its progress in
    `GET /sessions/<id>` (`postcall`) or wait for the live feed's `revision` event.
    """
    node: Node = current_app.extensions["intellimeet.node"]
    if node.registry.get(call_id) is not None:
        raise ApiError(409, "call_live", f"session {call_id} is live; its pass runs when it ends")
    if node.store.get_call(call_id) is None:
        raise ApiError(404, "not_found", f"no session {call_id}")
    if not node.postcall.has_recording(call_id):
        raise ApiError(409, "no_recording", f"session {call_id} has no recording on this node")
    row = node.postcall.request(call_id)
    if row is None:
        running = node.store.latest_pass(call_id)
        which = f" ({running.id}, {running.state})" if running is not None else ""
        raise ApiError(409, "pass_running", f"a pass of session {call_id} is not done{which}")
    return jsonify(views.postcall(row)), 202, {"Location": f"/sessions/{call_id}"}
