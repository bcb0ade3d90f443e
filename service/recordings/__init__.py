"""Recordings: both sides of every call, kept durably as Ogg Opus while the call runs.

What other parts use (the post-call pass above all) is re-exported here:

- ``recording_path(root, call_id, speaker)``: the file of one side (layout.py has the
  folder layout);
- ``list_recordings(root, call_id)``: a call's files, each ``complete`` (closed cleanly) or
  interrupted (the node was killed or the disk filled), with its duration on the call's
  timeline, and ``trim_torn_tail`` to cut an interrupted file back to its last whole page;
- ``CallRecorder``: the per-call writer, fed from the media path (recorder.py).

``root`` is ``Settings.recordings_dir`` (``IM_RECORDINGS_DIR``, default ``DATA/recordings``).
"""

from service.recordings.layout import (
    SPEAKERS,
    BadCallId,
    RecordingFile,
    check_call_id,
    delete_recordings,
    list_recordings,
    recording_path,
    trim_torn_tail,
)
from service.recordings.recorder import CallRecorder

__all__ = [
    "SPEAKERS",
    "BadCallId",
    "CallRecorder",
    "RecordingFile",
    "check_call_id",
    "delete_recordings",
    "list_recordings",
    "recording_path",
    "trim_torn_tail",
]
