"""/sessions/<id>/recording: play (with range requests, so a player can seek) or delete a
call's recorded audio. The files and their layout are service/recordings/'s."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from flask import Blueprint, current_app, jsonify, send_file
from spectree import Response as Resp

from service.api.errors import ApiError
from service.api.schemas import ErrorBody, RecordingDeleted, RecordingQuery
from service.api.spec import spec
from service.node import Node
from service.recordings import (
    BadCallId,
    RecordingFile,
    check_call_id,
    delete_recordings,
    list_recordings,
    trim_torn_tail,
)
from service.recordings.mix import MixError, stereo
from service.threadhub import off_hub

bp = Blueprint("recordings", __name__)
TAG = "sessions"


def _node() -> Node:
    return current_app.extensions["intellimeet.node"]


def _recorded_call(call_id: str) -> tuple[Path, bool]:
    """The recordings folder for a call that exists and whose audio was not deleted, and
    whether the call is live; 404 otherwise. The id is checked before it names a path."""
    node = _node()
    try:
        check_call_id(call_id)
    except BadCallId:
        raise ApiError(404, "not_found", f"no session {call_id}") from None
    live = node.registry.get(call_id)
    call = node.store.get_call(call_id) if live is None else None
    if live is None and call is None:
        raise ApiError(404, "not_found", f"no session {call_id}")
    deleted = live.recording_deleted_at if live is not None else None
    if deleted is None and call is not None and call.recording_deleted_at is not None:
        deleted = call.recording_deleted_at.timestamp()
    if deleted is not None:
        raise ApiError(404, "recording_deleted", f"the recording of {call_id} was deleted")
    return node.settings.recordings_dir, live is not None


def _playable(root: Path, call_id: str, speaker: str, live: bool, lossless: bool) -> Path:
    if lossless and speaker != "local":
        raise ApiError(400, "invalid_request", "format=flac is the local side's: add speaker=local")
    files: dict[str, RecordingFile] = {
        r.speaker: r for r in off_hub(list_recordings, root, call_id)
    }
    if not live:  # a kill's torn last page: cut, so every reader sees a clean stream
        for side in files.values():
            off_hub(trim_torn_tail, side)
    if speaker == "both":
        try:
            return off_hub(stereo, root, call_id, live)
        except MixError as exc:
            if not files:
                raise ApiError(404, "no_recording", f"session {call_id} has no recording") from None
            raise ApiError(503, "mix_failed", str(exc)) from None
    recording = files.get(speaker)
    if recording is None:
        raise ApiError(404, "no_recording", f"session {call_id} has no {speaker} recording")
    if lossless:
        if recording.lossless is None:
            raise ApiError(404, "no_recording", f"session {call_id} kept no lossless copy")
        return recording.lossless
    return recording.path


@bp.get("/sessions/<call_id>/recording")
@spec.validate(
    query=RecordingQuery,
    resp=Resp(
        HTTP_200=(None, "Ogg Opus (`audio/ogg`), or FLAC (`audio/flac`)"),
        HTTP_206=(None, "the bytes a `Range` asked for"),
        HTTP_304=(None, "not modified (`If-None-Match`, `If-Modified-Since`)"),
        HTTP_400=ErrorBody,
        HTTP_404=ErrorBody,
        HTTP_503=ErrorBody,
    ),
    tags=[TAG],
)
def get_recording(call_id: str, query: RecordingQuery):
    """The call's audio as Ogg Opus: `speaker` = local | remote | both (stereo, local
    left); `format=flac` with `speaker=local`: the local side's lossless copy. Time t in
    the file is time t of the transcript's segments. Range requests (206) and conditional
    requests (ETag, 304) are answered, so a player can seek."""
    root, live = _recorded_call(call_id)
    flac = query.format == "flac"
    path = _playable(root, call_id, query.speaker, live, flac)
    sent = send_file(
        path,
        mimetype="audio/flac" if flac else "audio/ogg",
        conditional=True,
        etag=True,
        max_age=0,
        download_name=f"{call_id}-{query.speaker}.{query.format}",
    )
    # The body as a bare iterator (read a block at a time), not a Response: spectree reads
    # a Response's body whole to validate it (an hour of call is ~10 MB), an iterator it
    # hands on untouched. werkzeug has already answered the Range and the conditions.
    return sent.response, sent.status_code, sent.headers


@bp.delete("/sessions/<call_id>/recording")
@spec.validate(resp=Resp(HTTP_200=RecordingDeleted, HTTP_404=ErrorBody), tags=[TAG])
def delete_recording(call_id: str):
    """Delete the call's audio for good (a live call stops recording first); the
    transcript stays. 404 afterwards."""
    root, live = _recorded_call(call_id)
    node = _node()
    session = node.registry.get(call_id)
    if session is not None:
        session.stop_recording("deleted")
    existed = off_hub(delete_recordings, root, call_id)
    if not existed and session is None:
        raise ApiError(404, "no_recording", f"session {call_id} has no recording")
    now = time.time()
    if session is not None:
        session.recording_deleted_at = now
    node.store.update_call(call_id, recording_deleted_at=datetime.fromtimestamp(now, UTC))
    return jsonify({"call_id": call_id, "deleted": True, "live": live})
