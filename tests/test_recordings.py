"""Recordings (service/recordings/): both sides of a call kept as Ogg Opus while it runs.

The files are checked with the tools that read them for real: ffmpeg (which must decode
them without a single error line), ffprobe, and whisper.load_audio. The call-level tests
use real nodes on real sockets: in-process ones (no model) for the wire, the API and the
full disk, node processes for SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import gevent
import numpy as np
import pytest
import test_full_disk
from helpers import JFK_CLIP, wait_until
from wire import listen, make_node, wait_state

from service.audio.codecs import OpusEncoder
from service.audio.wavfile import read_wav
from service.calls.options import CallOptions
from service.codec_table import Codec
from service.config import ConfigError, load_settings
from service.recordings import (
    CallRecorder,
    check_call_id,
    list_recordings,
    ogg,
    recording_path,
    retention,
    trim_torn_tail,
)
from service.recordings.recorder import FRAME_48K, opus_packet_samples
from service.transport import protocol as p

FFMPEG = "/usr/bin/ffmpeg"


def ffmpeg_errors(path: Path) -> str:
    """What `ffmpeg -v error` says decoding all of ``path`` ("" when clean)."""
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stderr.strip() + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def probe(path: Path) -> dict:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def decoded_samples(path: Path) -> np.ndarray:
    import whisper

    return whisper.load_audio(str(path))  # 16 kHz float32, through ffmpeg


def finish(recorder: CallRecorder) -> None:
    recorder.close()
    assert recorder.wait_closed(10, time.sleep), "the recorder did not close"


@pytest.fixture
def speech() -> np.ndarray:
    pcm = read_wav(JFK_CLIP)
    return pcm[: len(pcm) // 320 * 320]


def frames(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i : i + 320] for i in range(0, len(pcm), 320)]


# -- the Ogg layer ---------------------------------------------------------------------------


def reference_crc(data: bytes) -> int:
    """RFC 3533's CRC, bit by bit: polynomial 0x04C11DB7, no reflection, init 0."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_the_page_crc_is_rfc_3533s():
    rng = np.random.default_rng(1)
    for size in (0, 1, 27, 255, 4096):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert ogg.crc32(data) == reference_crc(data)


def test_opus_packet_durations_come_from_the_toc():
    enc = OpusEncoder(20_000, fec=False, complexity=5)
    packet = enc.encode(np.zeros(320, np.int16))
    assert opus_packet_samples(packet) == FRAME_48K
    ten_ms = OpusEncoder(20_000, frame_ms=10, fec=False).encode(np.zeros(320, np.int16))
    assert opus_packet_samples(ten_ms) == FRAME_48K  # two 10 ms frames in one packet
    assert opus_packet_samples(bytes([0x48 | 0x03])) == 0  # code 3 without its count byte
    assert opus_packet_samples(bytes([0x18])) == 2880  # SILK NB 60 ms: not a call frame
    assert opus_packet_samples(b"") == 0


# -- the recorder ----------------------------------------------------------------------------


def test_a_recording_plays_cleanly_and_keeps_the_calls_time_across_gaps(tmp_path, speech):
    """Local: Opus packets as the call sent them; remote: PCM16 with packets missing and
    one that is not a call frame. Both must be exactly as long as the call, with the
    missing packets as silence where they were."""
    call_id = uuid.uuid4().hex
    rec = CallRecorder(tmp_path, call_id, 20_000)
    enc = OpusEncoder(20_000, fec=False, complexity=5)
    lost = set(range(100, 150))  # a whole second never arrived
    for seq, frame in enumerate(frames(speech)):
        if seq % 100 == 0:  # a call's pace, roughly: the queue holds 10 s, not the whole clip
            wait_until(lambda: not rec._queue, 10, "the writer", step=0.01)
        rec.local(seq, Codec.OPUS, enc.encode(frame))
        if seq == 200:
            rec.remote(seq, Codec.OPUS, bytes([0x18, 0, 0]))  # a 60 ms packet: refused
        elif seq not in lost:
            rec.remote(seq, Codec.PCM16, frame.astype("<i2").tobytes())
    finish(rec)
    assert rec.stopped is None and rec.counters.dropped_queue_full == 0
    assert rec.counters.silence_filled == len(lost)
    assert rec.counters.invalid == 1
    n = len(speech) // 320
    files = {r.speaker: r for r in list_recordings(tmp_path, call_id)}
    assert set(files) == {"local", "remote"}
    for r in files.values():
        assert r.complete and r.valid_bytes == r.size_bytes
        assert r.duration_s == pytest.approx(n * 0.02 - 312 / 48_000)  # less the lookahead
        assert ffmpeg_errors(r.path) == ""
        stream = probe(r.path)["streams"][0]
        assert stream["codec_name"] == "opus" and stream["channels"] == 1
    local, remote = (decoded_samples(files[s].path) for s in ("local", "remote"))
    assert len(local) == len(remote) == n * 320 - 104  # 16 kHz, from the first sample on
    energy = lambda a, b: float(np.sqrt(np.mean(remote[a * 320 : b * 320] ** 2)))  # noqa: E731
    original = float(np.sqrt(np.mean((speech[100 * 320 : 150 * 320] / 32768.0) ** 2)))
    assert original > 0.01  # the clip speaks there...
    assert energy(105, 145) < 0.1 * original  # ...the recording is silent where packets were lost
    assert energy(160, 190) > 0.3 * original  # and speaks again right after


def pcm_of(path: Path) -> np.ndarray:
    """All of ``path`` as 16 kHz int16, through ffmpeg, up to any damage."""
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "quiet", "-i", str(path), "-f", "s16le", "-ar", "16000", "-"],
        capture_output=True,
        check=False,
    )
    return np.frombuffer(done.stdout, dtype="<i2")


def test_the_local_side_is_also_kept_lossless_on_the_calls_timeline(tmp_path, speech):
    """The FLAC copy holds exactly the frames captured, with silence where the queue lost
    one, and is as long as the Opus file of the same side."""
    call_id = uuid.uuid4().hex
    rec = CallRecorder(tmp_path, call_id, 20_000, lossless=True)
    enc = OpusEncoder(20_000, fec=False, complexity=5)
    skipped = set(range(40, 50))  # never reached the recorder
    for seq, frame in enumerate(frames(speech)):
        if seq % 100 == 0:
            wait_until(lambda: not rec._queue, 10, "the writer", step=0.01)
        if seq not in skipped:
            rec.local(seq, Codec.OPUS, enc.encode(frame), frame)
        rec.remote(seq, Codec.PCM16, frame.astype("<i2").tobytes())
    finish(rec)
    assert rec.counters.lossless_stopped is None
    (local, remote) = list_recordings(tmp_path, call_id)
    assert local.lossless == tmp_path / call_id / "local.flac" and remote.lossless is None
    assert probe(local.lossless)["streams"][0]["codec_name"] == "flac"
    assert ffmpeg_errors(local.lossless) == ""
    kept = pcm_of(local.lossless)
    expected = speech.copy()
    expected[40 * 320 : 50 * 320] = 0
    assert np.array_equal(kept, expected)  # bit for bit: lossless
    assert len(kept) / 16_000 == pytest.approx(local.duration_s, abs=0.03)
    assert rec.counters.bytes_written == sum(
        f.stat().st_size for f in (local.path, remote.path, local.lossless)
    )


def test_a_lossless_copy_that_cannot_be_written_leaves_the_opus_recording_whole(tmp_path, speech):
    call_id = uuid.uuid4().hex
    (tmp_path / call_id / "local.flac").mkdir(parents=True)  # cannot be opened as a file
    rec = CallRecorder(tmp_path, call_id, 20_000, lossless=True)
    enc = OpusEncoder(20_000, fec=False, complexity=5)
    for seq, frame in enumerate(frames(speech)[:100]):
        rec.local(seq, Codec.OPUS, enc.encode(frame), frame)
    finish(rec)
    assert rec.stopped is None
    assert rec.counters.lossless_stopped is not None
    (local, _) = list_recordings(tmp_path, call_id)
    assert local.complete and local.duration_s == pytest.approx(2.0, abs=0.03)
    assert local.lossless is None  # a folder of that name is no copy (nor an empty file)
    (tmp_path / call_id / "local.flac").rmdir()
    (tmp_path / call_id / "local.flac").touch()
    assert list_recordings(tmp_path, call_id)[0].lossless is None


def test_a_peer_cannot_make_the_recorder_write_more_than_the_calls_length(tmp_path):
    """A sequence number far ahead of the clock is recorded, but not padded up to."""
    call_id = uuid.uuid4().hex
    rec = CallRecorder(tmp_path, call_id, 20_000)
    packet = OpusEncoder(20_000, fec=False).encode(np.zeros(320, np.int16))
    rec.remote(0, Codec.OPUS, packet)
    rec.remote(2**32 - 1, Codec.OPUS, packet)
    rec.remote(5, Codec.OPUS, packet)  # behind what it said: out of order, dropped
    finish(rec)
    assert rec.counters.silence_filled <= 260  # the 5 s of slack, not 2**32 frames
    assert rec.counters.out_of_order == 1
    (remote,) = [r for r in list_recordings(tmp_path, call_id) if r.speaker == "remote"]
    assert remote.duration_s < 6 and ffmpeg_errors(remote.path) == ""


def test_a_full_queue_drops_packets_without_blocking_and_keeps_time(tmp_path, monkeypatch):
    from service.recordings import recorder as module

    monkeypatch.setattr(module, "MAX_QUEUED", 10)
    monkeypatch.setattr(module, "WAKE_S", 5.0)  # the writer is slow to come
    call_id = uuid.uuid4().hex
    rec = CallRecorder(tmp_path, call_id, 20_000)
    time.sleep(0.3)  # the thread is up and asleep
    packet = OpusEncoder(20_000, fec=False).encode(np.zeros(320, np.int16))
    start = time.perf_counter()
    for seq in range(100):
        rec.local(seq, Codec.OPUS, packet)
    assert time.perf_counter() - start < 0.05  # never waits for the writer
    assert rec.counters.dropped_queue_full == 90
    rec.local(100, Codec.OPUS, packet)  # still full: dropped too
    finish(rec)
    assert rec.counters.dropped_queue_full == 91


def test_a_sigkilled_recorder_keeps_all_but_the_last_seconds(tmp_path, speech):
    """A real process records in real time and is SIGKILLed mid-speech: the file holds
    what was fed up to the last ~2 s, and a torn last page is cut off cleanly."""
    call_id = uuid.uuid4().hex
    script = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        from service.audio.codecs import OpusEncoder
        from service.audio.wavfile import read_wav
        from service.recordings import CallRecorder
        pcm = read_wav({str(JFK_CLIP)!r})
        rec = CallRecorder({str(tmp_path)!r}, {call_id!r}, 20000, lossless=True)
        enc = OpusEncoder(20000, fec=False, complexity=5)
        t0 = time.monotonic()
        for seq in range(10**6):
            frame = pcm[(seq * 320) % (len(pcm) - 320):][:320]
            rec.local(seq, 1, enc.encode(frame), frame)
            rec.remote(seq, 0, bytes(640))  # a silent peer: tiny packets, slow to fill a buffer
            if seq == 50:
                print("recording", flush=True)
            time.sleep(max(0.0, t0 + (seq + 1) * 0.02 - time.monotonic()))
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"recording\n"
        started = time.monotonic() - 1.0
        time.sleep(5.0)
        fed_s = time.monotonic() - started
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    files = list_recordings(tmp_path, call_id)
    assert [r.speaker for r in files] == ["local", "remote"]
    for r in files:
        assert r.interrupted
        assert fed_s - 2.0 <= r.duration_s <= fed_s + 0.1, (r.duration_s, fed_s)
        trim_torn_tail(r)
        assert ffmpeg_errors(r.path) == ""
        assert len(decoded_samples(r.path)) == pytest.approx(r.duration_s * 16_000, abs=320)
    # The lossless copy of the local side: what was fed up to the last ~2 s as well.
    assert files[0].lossless is not None
    lossless_s = len(pcm_of(files[0].lossless)) / 16_000
    assert fed_s - 2.0 <= lossless_s <= fed_s + 0.1, (lossless_s, fed_s)


def test_a_file_is_scanned_once_per_version_not_once_per_request(tmp_path, speech, monkeypatch):
    """A player seeking in an ended call sends a range request per seek; each listed (and
    scanned) both sides whole. A file is read again only when it changed."""
    from service.recordings import layout

    read: list[str] = []

    def counted(path: Path) -> ogg.Scan:
        read.append(path.name)
        return ogg.scan(path)

    monkeypatch.setattr(layout, "scan", counted)
    call_id = uuid.uuid4().hex
    rec = CallRecorder(tmp_path, call_id, 20_000)
    enc = OpusEncoder(20_000, fec=False, complexity=5)
    for seq, frame in enumerate(frames(speech)[:100]):
        rec.local(seq, Codec.OPUS, enc.encode(frame))
        rec.remote(seq, Codec.PCM16, frame.astype("<i2").tobytes())
    finish(rec)
    first = list_recordings(tmp_path, call_id)
    assert sorted(read) == ["local.opus", "remote.opus"]
    for _ in range(5):
        assert list_recordings(tmp_path, call_id) == first
    assert len(read) == 2
    # A torn tail (a kill) is a new version of the file, and so is its trim.
    local = recording_path(tmp_path, call_id, "local")
    os.truncate(local, first[0].size_bytes - 10)  # the last page, with its EOS, cut short
    (torn, _) = list_recordings(tmp_path, call_id)
    assert read[2:] == ["local.opus"] and torn.interrupted
    assert trim_torn_tail(torn)
    (trimmed, _) = list_recordings(tmp_path, call_id)
    assert read[3:] == ["local.opus"] and trimmed.size_bytes == torn.valid_bytes


# -- paths, settings, wire -------------------------------------------------------------------


def test_only_the_nodes_own_call_ids_become_paths(tmp_path):
    good = uuid.uuid4().hex
    assert recording_path(tmp_path, good, "local") == tmp_path / good / "local.opus"
    for bad in ("..", "../etc", good.upper(), good + "/x", good[:-1], "", "a" * 33):
        with pytest.raises(ValueError):
            check_call_id(bad)
    with pytest.raises(ValueError):
        recording_path(tmp_path, good, "../local")


def test_recording_settings_are_checked(tmp_path):
    s = load_settings({"IM_DATA_DIR": str(tmp_path)})
    assert s.record and s.recordings_dir == tmp_path / "recordings"
    assert s.recording_retention_days == 0
    assert not load_settings({"IM_RECORD": "0"}).record
    assert s.record_lossless and not load_settings({"IM_RECORD_LOSSLESS": "no"}).record_lossless
    for env in (
        {"IM_RECORD": "maybe"},
        {"IM_RECORD_LOSSLESS": "flac"},
        {"IM_RECORDING_RETENTION_DAYS": "-1"},
        {"IM_RECORDING_RETENTION_DAYS": "x"},
        {"IM_HANGUP_DRAIN_S": "0"},
    ):
        with pytest.raises(ConfigError):
            load_settings(env)


def test_hellos_say_whether_a_side_records_and_old_ones_say_nothing():
    for records in (True, False, None):
        hello = p.Hello(transcribes=True, nonce="ab" * 32, records=records)
        (back,) = p.Decoder().feed(p.encode(hello))
        assert isinstance(back, p.Hello) and back.records is records
    old = p.encode(p.Hello(transcribes=True, nonce="ab" * 32))
    assert b"records" not in old  # a hello that does not say is byte for byte as before
    body = json.dumps(
        {"protocol": p.PROTOCOL_NAME, "version": 2, "transcribes": True, "codecs": [],
         "nonce": "ab" * 32, "records": "yes"}
    ).encode()  # fmt: skip
    with pytest.raises(p.ProtocolError, match="records"):
        p.decode(p.MessageType.HELLO, body)


# -- a call's recordings through the API -------------------------------------------------


def started_call(tmp_path: Path, a_env: dict | None = None, b_records: bool = True):
    a = make_node(tmp_path, "a", **(a_env or {}))
    b = make_node(tmp_path, "b")
    tone = CallOptions(input="tone:440", output=None, language=None, transcribe=False)
    la = listen(a, tone)
    db = b.registry.dial(la.local_address, la.token, replace(tone, record=b_records))
    wait_state(la, {"connected"})
    wait_state(db, {"connected"})
    wait_until(lambda: la.media and db.media, 5, "both calls' media to start")
    return a, b, la, db


def test_both_sides_are_recorded_served_with_ranges_and_deleted_for_good(tmp_path):
    from service.api import create_app

    a, b, la, db = started_call(tmp_path, b_records=False)
    try:
        api = create_app(a).test_client()
        gevent.sleep(3.0)
        body = api.get(f"/sessions/{la.id}").get_json()
        assert body["recording"]["local"] is True
        assert body["recording"]["lossless"] is True  # IM_RECORD_LOSSLESS's default
        assert body["recording"]["remote_records"] is False  # B said so in its hello
        assert db.peer_hello is not None and db.peer_hello.records is True
        la.end("hangup")
        wait_state(db, {"ended"})
        assert db.recorder is None and not (b.settings.recordings_dir / db.id).exists()
        ended = api.get(f"/sessions/{la.id}").get_json()
        assert ended["recording"] == {
            "local": True,
            "remote_records": False,
            "stopped": None,
            "deleted_at": None,
        }
        full = api.get(f"/sessions/{la.id}/recording?speaker=local")
        assert full.status_code == 200 and full.mimetype == "audio/ogg"
        assert full.headers["Accept-Ranges"] == "bytes"
        data = full.get_data()
        saved = tmp_path / "local.opus"
        saved.write_bytes(data)
        assert ffmpeg_errors(saved) == ""
        assert float(probe(saved)["format"]["duration"]) == pytest.approx(3.0, abs=0.7)
        part = api.get(
            f"/sessions/{la.id}/recording?speaker=local", headers={"Range": "bytes=1000-1999"}
        )
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        assert part.get_data() == data[1000:2000]
        both = api.get(f"/sessions/{la.id}/recording?speaker=both")
        assert both.status_code == 200
        saved.write_bytes(both.get_data())
        assert ffmpeg_errors(saved) == ""
        assert probe(saved)["streams"][0]["channels"] == 2
        assert api.get(f"/sessions/{la.id}/recording?speaker=left").status_code == 400
        # The local side's lossless copy: FLAC, as long as its Opus file, seekable too.
        flac = api.get(f"/sessions/{la.id}/recording?speaker=local&format=flac")
        assert flac.status_code == 200 and flac.mimetype == "audio/flac"
        saved = tmp_path / "local.flac"
        saved.write_bytes(flac.get_data())
        assert ffmpeg_errors(saved) == "" and probe(saved)["streams"][0]["codec_name"] == "flac"
        assert float(probe(saved)["format"]["duration"]) == pytest.approx(3.0, abs=0.7)
        part = api.get(
            f"/sessions/{la.id}/recording?speaker=local&format=flac",
            headers={"Range": "bytes=100-199"},
        )
        assert part.status_code == 206 and part.get_data() == saved.read_bytes()[100:200]
        wrong = api.get(f"/sessions/{la.id}/recording?speaker=remote&format=flac")
        assert wrong.status_code == 400 and "speaker=local" in wrong.get_json()["error"]["message"]
        (a.settings.recordings_dir / la.id / "local.flac").unlink()
        none = api.get(f"/sessions/{la.id}/recording?speaker=local&format=flac")
        assert none.status_code == 404 and none.get_json()["error"]["code"] == "no_recording"

        gone = api.delete(f"/sessions/{la.id}/recording")
        assert gone.status_code == 200 and gone.get_json()["deleted"] is True
        assert not (a.settings.recordings_dir / la.id).exists()
        assert api.get(f"/sessions/{la.id}/recording").status_code == 404
        assert api.delete(f"/sessions/{la.id}/recording").status_code == 404
        row = a.store.get_call(la.id)
        assert row is not None and row.recording_deleted_at is not None
        shown = api.get(f"/sessions/{la.id}").get_json()["recording"]
        assert shown["deleted_at"] is not None
        for bad in ("..", "%2e%2e", uuid.uuid4().hex, "x" * 32):
            assert api.get(f"/sessions/{bad}/recording").status_code == 404
    finally:
        a.close()
        b.close()


def test_retention_deletes_old_recordings_and_notes_it_on_the_call(tmp_path, node_factory):
    root = tmp_path / "recs"
    old, new, live = (uuid.uuid4().hex for _ in range(3))
    for call_id in (old, new, live):
        folder = root / call_id
        folder.mkdir(parents=True)
        (folder / "local.opus").write_bytes(b"x")
    month_ago = time.time() - 31 * 86_400
    for call_id in (old, live):
        for f in [root / call_id, *(root / call_id).iterdir()]:
            os.utime(f, (month_ago, month_ago))
    # Played last week: the stereo cache made then (and the folder's time, which its
    # creation set) do not make a recording last written a month ago new.
    played = uuid.uuid4().hex
    (root / played).mkdir()
    (root / played / "remote.opus").write_bytes(b"x")
    os.utime(root / played / "remote.opus", (month_ago, month_ago))
    (root / played / "both.opus").write_bytes(b"x")
    (root / "not-a-call").mkdir()
    os.utime(root / "not-a-call", (month_ago, month_ago))
    assert retention.sweep(root, 0) == []  # 0: keep forever
    assert retention.sweep(root, 30, live={live}) == sorted([old, played])
    assert sorted(p.name for p in root.iterdir()) == sorted([new, live, "not-a-call"])

    # And a node does it at its start, noting it on the call's row.
    node = node_factory("n", IM_RECORDINGS_DIR=str(root))  # keeps everything
    node.store.add_call(id=live, mode="listen", state="ended", record=True)
    node_factory.close(node)
    assert (root / live).exists()
    node = node_factory("n", IM_RECORDINGS_DIR=str(root), IM_RECORDING_RETENTION_DAYS="7")
    wait_until(lambda: not (root / live).exists(), 10, "the sweep at start")
    row = wait_until(lambda: (c := node.store.get_call(live)) and c.recording_deleted_at and c)
    assert row.recording_deleted_at is not None
    assert (root / new).exists()


small_disk = test_full_disk.small_disk  # the fixture: a real, small tmpfs (needs root)


def test_a_full_disk_stops_the_recording_with_the_reason_never_the_call(tmp_path, small_disk):
    from service.api import create_app

    a, b, la, db = started_call(tmp_path, a_env={"IM_RECORDINGS_DIR": str(small_disk)})
    try:
        filler = small_disk / "filler"
        st = os.statvfs(small_disk)
        with filler.open("wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 8192))
        recorder = la.recorder
        assert recorder is not None
        wait_until(lambda: recorder.stopped, 30, "the recording to stop")
        assert recorder.stopped == "disk_full"
        gevent.sleep(1.0)
        assert la.state == "connected" and db.state == "connected"  # the call goes on
        api = create_app(a).test_client()
        live = api.get(f"/sessions/{la.id}").get_json()
        assert live["recording"]["stopped"] == "disk_full"
        la.end("hangup")
        assert la.end_reason == "hangup"
        wait_state(db, {"ended"})
        assert db.end_reason == "peer_hangup"
        assert api.get(f"/sessions/{la.id}").get_json()["recording"]["stopped"] == "disk_full"
        filler.unlink()  # what was written is still a readable (interrupted) recording
        (local,) = [r for r in list_recordings(small_disk, la.id) if r.speaker == "local"]
        assert local.interrupted and local.duration_s > 0
        served = api.get(f"/sessions/{la.id}/recording?speaker=local")
        assert served.status_code == 200
        out = tmp_path / "served.opus"
        out.write_bytes(served.get_data())
        assert ffmpeg_errors(out) == ""
    finally:
        a.close()
        b.close()
