"""The engine's plumbing on its own: message codec and shared-memory rings."""

import os
import subprocess
import sys
import uuid

import msgpack
import numpy as np
import pytest

from anonengine import messages
from anonengine.detections import Detections
from anonengine.shm import SHM_DIR, FrameRing, StaleSlot, instance_segments, remove_stale_segments, segment_name

REF = messages.FrameRef("cam", 7, 3584, "anonengine-t-camx1", 2, 12, 360, 640)


@pytest.mark.parametrize("message", [
    REF,
    messages.Detected(REF, messages.DetectStatus.OK, messages.PackedDetections((2, 2), b"", b"", b"", None)),
    messages.OutFrame(REF, obscured=True),
    messages.StreamInfoMsg("cam", 640, 360, (25, 1), (1, 12800), False, 48, "ring", 12, "out.mp4", None, 5,
                           [[(0.1, 0.2), (0.3, 0.4), (0.5, 0.1)]]),
    messages.StreamEnd("cam", 48, error="truncated"),
    messages.Release("cam", 7, 2),
    messages.CameraDone("cam", 48, "out.mp4"),
    messages.Stats("detect", "w0", {"frames_ok": 3}),
    messages.SourceStatus("cam", messages.SourceState.RECONNECTING, "connection refused", 2),
    messages.Attach({"name": "cam", "source": "rtsp://x"}),
    messages.Detach("cam"),
    messages.StatusRequest(),
    messages.Reply(False, "no such camera"),
    messages.TapHeader("cam", 7, 3584, 0.28, 640, 360, "jpeg", False, [{"box": [1, 2, 3, 4]}]),
])  # fmt: skip
def test_every_message_type_survives_the_codec(message):
    assert messages.decode(messages.encode(message)) == message


def test_malformed_messages_are_errors_that_say_what_was_expected():
    with pytest.raises(messages.MessageError, match="missing required field `seq`"):
        messages.decode(msgpack.packb({"type": "FrameRef", "camera": "c"}))
    with pytest.raises(messages.MessageError, match="Invalid value 'Pickle'"):
        messages.decode(msgpack.packb({"type": "Pickle"}))
    with pytest.raises(messages.MessageError, match="Invalid enum value 'maybe'"):
        messages.decode(messages.encode(messages.Detected(REF, "maybe")))
    with pytest.raises(messages.MessageError, match="Expected `int`, got `str`"):
        messages.decode(msgpack.packb({"type": "Release", "camera": "c", "seq": "7", "slot": 1}))
    with pytest.raises(messages.MessageError, match="malformed"):
        messages.decode(b"\xc1not msgpack")


def test_detections_with_masks_round_trip_through_their_packed_form():
    masks = np.zeros((2, 5, 7), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 6] = True
    det = Detections((5, 7), np.arange(8, dtype=np.float32).reshape(2, 4), np.array([0.5, 0.9], np.float32),
                     np.random.default_rng(0).random((2, 17, 3), dtype=np.float32), masks)
    back = messages.unpack_detections(messages.pack_detections(det))
    for name in ("boxes", "scores", "keypoints", "masks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(det, name))


@pytest.fixture
def ring():
    ring = FrameRing.create(segment_name(f"t{uuid.uuid4().hex[:8]}", "cam"), 3, 8, 10)
    yield ring
    ring.close()


def test_a_reused_slot_is_never_read_as_the_frame_asked_for(ring):
    frame7 = np.full((8, 10, 3), 7, np.uint8)
    ring.write(1, 7, frame7)
    np.testing.assert_array_equal(ring.read(1, 7), frame7)
    view, state = ring.view(1, 7)
    ring.write(1, 10, np.full((8, 10, 3), 10, np.uint8))  # the owner reuses the slot meanwhile
    with pytest.raises(StaleSlot):
        ring.check(1, 7, state)
    with pytest.raises(StaleSlot):
        ring.read(1, 7)


def test_a_slot_being_written_is_not_readable(ring):
    ring.begin_write(0, (8, 10, 3))
    with pytest.raises(StaleSlot):
        ring.view(0, -1)


def test_attaching_processes_never_unlink_the_owners_segment(ring):
    """Python's resource tracker unlinks attached segments at exit unless told not to."""
    code = (f"from anonengine.shm import FrameRing; r = FrameRing.attach({ring.name!r}, 3, 8, 10); "
            "print(r.read(2, 5).sum()); r.close()")
    ring.write(2, 5, np.ones((8, 10, 3), np.uint8))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(8 * 10 * 3)
    assert (SHM_DIR / ring.name).exists()
    assert oct(os.stat(SHM_DIR / ring.name).st_mode & 0o777) == "0o600"


def test_stale_segments_of_dead_instances_are_removed(ring):
    instance = ring.name.split("-")[1]
    assert remove_stale_segments(lambda i: i != instance) == [ring.name]
    assert instance_segments(instance) == []


def test_a_segment_this_user_may_not_remove_is_left_and_the_sweep_goes_on(ring, monkeypatch):
    """Another user's dead engine's segments (in /dev/shm, sticky: not ours to unlink) must not stop this
    engine's start: they are skipped. Root may unlink anything, so the refusal is simulated."""
    import anonengine.shm as shm

    instance = ring.name.split("-")[1]
    real_unlink = shm.os.unlink

    def refuse(path, *args, **kwargs):
        if str(path).endswith(ring.name):
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(shm.os, "unlink", refuse)
    assert remove_stale_segments(lambda i: i != instance) == []
    assert (SHM_DIR / ring.name).exists()


def test_a_stage_starting_removes_the_rings_of_its_instance_whose_maker_is_dead(tmp_path):
    """Under honcho, which SIGKILLs a stage still draining after 5 s, a capture's 62 MB ring stayed in /dev/shm
    on every run; a stage starting removes what a dead process made for its instance, and only that. A run
    folder's socket no one listens at is no engine for `anonengine tap` (it made a live one need naming)."""
    import socket

    from anonengine.engine.commands import _only_instance
    from anonengine.shm import remove_orphaned_segments

    instance = f"t{uuid.uuid4().hex[:8]}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    orphan = FrameRing.create(segment_name(instance, f"lobbyx{int(dead.stdout)}"), 2, 8, 10)
    mine = FrameRing.create(segment_name(instance, f"lobbyx{os.getpid()}o1"), 2, 8, 10)
    try:
        assert remove_orphaned_segments(instance) == [orphan.name]
        assert instance_segments(instance) == [mine.name]
    finally:
        for ring in (orphan, mine):
            ring.close()
            if (SHM_DIR / ring.name).exists():
                ring.unlink()
    for name in ("stale", "live"):
        (tmp_path / name).mkdir()
    (tmp_path / "stale" / "tap.sock").touch()  # left by stages killed outright
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "live" / "tap.sock"))
        server.listen()
        assert _only_instance(tmp_path, "tap.sock") == "live"
