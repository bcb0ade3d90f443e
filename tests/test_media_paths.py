"""`file:` inputs and outputs stay inside the media folder (IM_MEDIA_DIR).

An API caller names the paths, so each test is an attack on the real app over a real Node
(no Whisper model): reading a WAV outside the folder, probing which paths exist by the error
text, writing outside it (an ``authorized_keys`` in a stand-in home), a dangling symlink, and
a link or file swapped in at the output's name between ``POST /sessions`` and the moment the
call connects, with a real dialer (the node dials itself) carrying real audio.

The expected texts are written out here, not imported, so that these tests run (and fail
for the reason they name) against code without the confinement too. Relative paths are
tried with the working directory set to the media folder, which is where code that
resolved them against the process's directory would look as well.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import JFK_CLIP, get_session, wait_state, wait_until

INPUT_REFUSED = "file input refused"
OUTPUT_REFUSED = "file output refused"
PRECIOUS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI precious@home\n"


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copyfile(JFK_CLIP, folder / "clip.wav")
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A real WAV and a stand-in home with an .ssh folder, next to the media folder."""
    shutil.copyfile(JFK_CLIP, tmp_path / "secret.wav")
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def node(node_factory, media: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(media)
    return node_factory("data", IM_MEDIA_DIR=str(media))


def post(client, **fields):
    return client.post("/sessions", json={"mode": "listen", "port": 0, **fields})


def refused(client, kind: str, spec: str) -> str:
    """POST a listen with `spec` as its input or output; it must be a 422 that names no
    path and creates nothing. Returns the message."""
    if kind == "input":
        fields = {"input": spec, "output": None}
    else:
        fields = {"input": "silence", "output": spec}
    r = post(client, **fields)
    assert r.status_code == 422, f"{spec!r} was accepted: {r.get_data(as_text=True)}"
    error = r.get_json()["error"]
    assert error["code"] == "unusable_device"
    assert client.get("/sessions").get_json()["sessions"] == []
    return error["message"]


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# -- inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["file:../secret.wav", "file:./../secret.wav", "file:../media/../secret.wav"],
)
def test_input_traversal_out_of_the_media_folder_is_refused(client, outside, spec):
    assert refused(client, "input", spec).startswith(INPUT_REFUSED)


def test_input_traversal_to_etc_passwd_is_refused(client, media):
    up = "../" * len(media.parts)
    assert refused(client, "input", f"file:{up}etc/passwd").startswith(INPUT_REFUSED)


def test_an_absolute_input_outside_the_media_folder_is_refused(client, outside, media):
    assert refused(client, "input", f"file:{outside / 'secret.wav'}").startswith(INPUT_REFUSED)
    # Absolute inside the folder is fine, as is the same file relative to it.
    for spec in (f"file:{media / 'clip.wav'}", "file:clip.wav"):
        r = post(client, input=spec, output=None)
        assert r.status_code == 201, r.get_data(as_text=True)


def test_a_symlinked_input_is_refused(client, outside, media):
    (media / "link.wav").symlink_to(outside / "secret.wav")
    (media / "linked-dir").symlink_to(outside)
    (media / "inside-link.wav").symlink_to(media / "clip.wav")  # even to a file inside
    for spec in ("file:link.wav", "file:linked-dir/secret.wav", "file:inside-link.wav"):
        assert refused(client, "input", spec).startswith(INPUT_REFUSED)


def test_every_input_refusal_reads_the_same(client, outside, media):
    """Missing, not a WAV, a folder, a FIFO, outside, traversal, symlink, unreadable: one
    text, so the answers tell a caller nothing about which paths exist."""
    (media / "notes.wav").write_bytes(b"not a wav at all")
    (media / "folder.wav").mkdir()
    os.mkfifo(media / "pipe.wav")
    (media / "link.wav").symlink_to(outside / "secret.wav")
    specs = [
        "file:missing.wav",
        "file:notes.wav",
        "file:folder.wav",
        "file:pipe.wav",
        f"file:{outside / 'secret.wav'}",
        f"file:{outside / 'no-such.wav'}",
        "file:../secret.wav",
        "file:link.wav",
        "file:",
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (media / "locked.wav").write_bytes((media / "clip.wav").read_bytes())
        (media / "locked.wav").chmod(0)
        specs.append("file:locked.wav")
    messages = {spec: refused(client, "input", spec) for spec in specs}
    assert len(set(messages.values())) == 1, messages
    message = messages["file:missing.wav"]
    assert message.startswith(INPUT_REFUSED)
    assert "missing" not in message and str(outside) not in message


# -- outputs -------------------------------------------------------------------------------


def test_output_traversal_is_refused_and_writes_nothing(client, outside):
    keys = outside / "home" / ".ssh" / "authorized_keys"
    for spec in ("file:../home/.ssh/authorized_keys", "file:x/../../home/.ssh/authorized_keys"):
        assert refused(client, "output", spec).startswith(OUTPUT_REFUSED)
    assert not keys.exists()


def test_an_output_outside_the_media_folder_is_refused(client, outside):
    keys = outside / "home" / ".ssh" / "authorized_keys"
    assert refused(client, "output", f"file:{keys}").startswith(OUTPUT_REFUSED)
    keys.write_bytes(PRECIOUS)
    before = snapshot(keys)
    assert refused(client, "output", f"file:{keys}").startswith(OUTPUT_REFUSED)
    assert snapshot(keys) == before


def test_a_dangling_symlink_output_is_refused(client, outside, media):
    keys = outside / "home" / ".ssh" / "authorized_keys"
    (media / "rec.wav").symlink_to(keys)  # dangling: the target does not exist yet
    assert refused(client, "output", "file:rec.wav").startswith(OUTPUT_REFUSED)
    assert not keys.exists()
    assert (media / "rec.wav").is_symlink()


def test_every_output_refusal_reads_the_same_and_changes_nothing(client, outside, media):
    """An existing file (kept byte for byte), a symlink to one, a dangling one, a symlinked
    folder, a missing folder, traversal, outside: one text for all."""
    keys = outside / "home" / ".ssh" / "authorized_keys"
    keys.write_bytes(PRECIOUS)
    (media / "taken.wav").write_bytes(PRECIOUS)
    (media / "to-keys.wav").symlink_to(keys)
    (media / "dangling.wav").symlink_to(outside / "home" / "new-file")
    (media / "ssh").symlink_to(outside / "home" / ".ssh")
    kept = {p: snapshot(p) for p in (keys, media / "taken.wav")}
    specs = [
        "file:taken.wav",
        f"file:{media / 'taken.wav'}",
        "file:to-keys.wav",
        "file:dangling.wav",
        "file:ssh/authorized_keys",
        "file:ssh/new-file",
        "file:no-such-folder/rec.wav",
        "file:../home/.ssh/authorized_keys",
        f"file:{keys}",
        "file:",
    ]
    messages = {spec: refused(client, "output", spec) for spec in specs}
    assert len(set(messages.values())) == 1, messages
    assert messages["file:taken.wav"].startswith(OUTPUT_REFUSED)
    assert {p: snapshot(p) for p in kept} == kept
    assert not (outside / "home" / "new-file").exists()
    assert not (outside / "home" / ".ssh" / "new-file").exists()


@pytest.mark.parametrize("swapped_in", ["symlink", "file"])
def test_what_is_put_at_the_output_name_after_post_is_never_written(
    client, outside, media, swapped_in
):
    """POST a listen that records to rec.wav; then, before anyone dials, replace whatever is
    at that name with a symlink to authorized_keys (or with a precious file of its own).
    A real dialer connects and sends a second of tone; neither target may be touched."""
    keys = outside / "home" / ".ssh" / "authorized_keys"
    keys.write_bytes(PRECIOUS)
    name = media / "rec.wav"
    r = post(client, input="silence", output=f"file:{name}", transcribe=False)
    assert r.status_code == 201, r.get_data(as_text=True)
    listening = r.get_json()

    name.unlink(missing_ok=True)  # the node may already have created it: remove it first
    if swapped_in == "symlink":
        name.symlink_to(keys)
        target = keys
    else:
        name.write_bytes(PRECIOUS)
        target = name
    before = snapshot(target)

    dial = {"mode": "dial", "peer": listening["address"], "token": listening["token"]}
    dial |= {"input": "tone:440", "output": None, "transcribe": False}
    r = client.post("/sessions", json=dial)
    assert r.status_code == 201, r.get_data(as_text=True)
    dialing = r.get_json()
    heard = wait_until(
        lambda: (
            (s := get_session(client, listening["id"]))["state"] in ("connected", "ended", "failed")
            and (s["state"] != "connected" or s["stats"]["frames_received"] >= 50)
            and s
        ),
        10,
        "a second of audio at the listener",
    )
    client.delete(f"/sessions/{dialing['id']}")
    wait_state(client, listening["id"], {"ended"})
    assert heard["state"] == "connected"
    assert heard["stats"]["output"]["failed"] is None
    assert snapshot(target) == before
    assert keys.read_bytes() == PRECIOUS
    if swapped_in == "symlink":
        assert name.is_symlink()
