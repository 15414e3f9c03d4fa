"""Recording in segments (anonengine.recording), on real encoded video: frames are durable as they
leave the encoder, an encoder killed with -9 loses nothing its successor cannot write again, segments
join into one output without re-encoding, and kept segments are pruned oldest first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import cv2
import pytest

from anonengine.config import EncoderConfig
from anonengine.recording import SegmentedRecording, list_segments, segments_folder
from anonengine.sample import render_frames
from anonengine.video import StreamInfo, VideoReader

WIDTH, HEIGHT, FPS = 320, 192, 25
TIME_BASE = Fraction(1, 12800)  # an MP4 source's: 512 ticks a frame
TICKS = 512
INFO = StreamInfo(WIDTH, HEIGHT, Fraction(FPS), TIME_BASE, 0, False)


@pytest.fixture(scope="module")
def images():
    return [image for image, _, _ in render_frames(WIDTH, HEIGHT, 120, seed=3)]


def worst_psnr(images, frames) -> float:
    return min(cv2.PSNR(a, f.image) for a, f in zip(images, frames))


def record(i: int) -> dict:
    return {"camera": "cam", "index": i, "pts": i * TICKS, "persons": []}


@pytest.mark.parametrize("live", [True, False])
def test_an_encoder_on_its_own_keeps_a_live_cameras_earlier_recording(live, images, tmp_path):
    """Stages run by the Procfile (no launcher to claim the output): the encoder claims it, and sets a live
    camera's earlier recording aside with its metadata, as the launcher does; a file's is replaced."""
    earlier = {tmp_path / "out.mp4": b"an earlier run's hours", tmp_path / "out.jsonl": b"{}\n"}
    for file, content in earlier.items():
        file.write_bytes(content)
    info = StreamInfo(WIDTH, HEIGHT, Fraction(FPS), TIME_BASE, 0, live)
    recording = SegmentedRecording(tmp_path / "out.mp4", info, EncoderConfig(), "cam", "run1",
                                   str(tmp_path / "out.jsonl"), max_pending=10)
    recording.setup()
    for i, image in enumerate(images[:5]):
        recording.add(i, i, i * TICKS, image, record(i))
    output = recording.close()
    assert len(list(VideoReader(str(output)))) == 5
    kept = {tmp_path / "out.1.mp4": earlier[tmp_path / "out.mp4"], tmp_path / "out.1.jsonl": earlier[tmp_path / "out.jsonl"]}
    assert ({file: file.read_bytes() for file in kept if file.exists()} == kept) if live else not any(map(Path.exists, kept))


def test_frames_are_durable_as_they_leave_the_encoder_and_the_open_segment_plays(images, tmp_path):
    recording = SegmentedRecording(tmp_path / "out.mp4", INFO, EncoderConfig(), "cam", "run1",
                                   str(tmp_path / "out.jsonl"), max_pending=10)
    recording.setup()
    durable = []
    for i, image in enumerate(images[:60]):
        durable += recording.add(i, i, i * TICKS, image, record(i))
        assert len(recording.pending) < 10  # never more held than the rings allow
    assert durable == list(range(len(durable))) and len(durable) >= 50
    # The open segment, read as it is now (a player, or whoever finds it after a crash).
    (open_segment,) = recording.folder.glob("*.partial.mp4")
    copy = tmp_path / "copy.mp4"
    shutil.copy(open_segment, copy)
    assert len(list(VideoReader(str(copy)))) >= len(durable)
    output = recording.close()
    frames = list(VideoReader(str(output)))
    assert len(frames) == 60 and not recording.folder.exists()
    assert [json.loads(line)["index"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == list(range(60))
    assert worst_psnr(images, frames) >= 30  # crf 18 on sensor noise; a wrong or torn frame is far below


def test_segments_roll_and_join_into_one_output_without_reencoding(images, tmp_path):
    cfg = EncoderConfig(segment_s=1.0)
    recording = SegmentedRecording(tmp_path / "out.mp4", INFO, cfg, "cam", "run1", max_pending=10)
    recording.setup()
    for i, image in enumerate(images):
        recording.add(i, i, i * TICKS, image, None)
    segments = list_segments(recording.folder)
    assert len(segments) == 5  # 120 frames at 25 fps, a second each (the last still open)
    packets = [bytes(packet) for segment in segments for packet, _, _ in segment.packets()]
    recording.close()
    frames = list(VideoReader(str(tmp_path / "out.mp4")))
    assert [f.pts for f in frames] == [i * TICKS for i in range(120)]
    import av

    with av.open(str(tmp_path / "out.mp4")) as joined:
        assert [bytes(p) for p in joined.demux(video=0) if p.size][: len(packets) - 10] == packets[: len(packets) - 10]


WRITER = textwrap.dedent("""
    import os, signal, sys
    from fractions import Fraction
    from anonengine.config import EncoderConfig
    from anonengine.recording import SegmentedRecording
    from anonengine.sample import render_frames
    from anonengine.video import StreamInfo
    folder, count = sys.argv[1], int(sys.argv[2])
    info = StreamInfo(320, 192, Fraction(25), Fraction(1, 12800), 0, False)
    recording = SegmentedRecording(folder + "/out.mp4", info, EncoderConfig(segment_s=1.0), "cam", "run1",
                                   folder + "/out.jsonl", max_pending=10)
    recording.setup()
    durable = []
    for i, (image, _, _) in zip(range(count), render_frames(320, 192, 120, seed=3)):
        obscured = i % 7 == 0
        durable += recording.add(i, i, i * 512, image, {"camera": "cam", "index": i, "pts": i * 512,
                                                        "obscured": obscured, "persons": []}, obscured)
    print(len(durable), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_an_encoder_killed_with_9_loses_nothing_its_successor_cannot_write(images, tmp_path):
    result = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "70"], check=False,
                            capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    durable = int(result.stdout)
    assert 55 <= durable < 70
    # Its successor, of the same run: the frames the dead one reported durable are on disk; the others
    # (their slots never released) come again, and again some it had on disk but not yet reported.
    successor = SegmentedRecording(tmp_path / "out.mp4", INFO, EncoderConfig(segment_s=1.0), "cam", "run1",
                                   str(tmp_path / "out.jsonl"), max_pending=10)
    successor.setup()
    assert successor.frames >= durable
    for i in range(durable, 120):
        successor.add(i, i, i * TICKS, images[i], record(i) | {"obscured": i % 7 == 0}, i % 7 == 0)
    output = successor.close()
    # Every frame obscured whole is counted once: the dead one's from the metadata it left, the rest as written.
    assert successor.obscured == len(range(0, 120, 7))
    frames = list(VideoReader(str(output)))
    assert [f.pts for f in frames] == [i * TICKS for i in range(120)]
    records = [json.loads(line)["index"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records == list(range(120))
    assert worst_psnr(images, frames) >= 30  # crf 18 on sensor noise; a wrong or torn frame is far below


def test_a_new_run_removes_a_dead_runs_working_folder(images, tmp_path):
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "40"], check=False, capture_output=True)
    assert list_segments(segments_folder(tmp_path / "out.mp4", keep=False))
    fresh = SegmentedRecording(tmp_path / "out.mp4", INFO, EncoderConfig(), "cam", "run2", max_pending=10)
    fresh.setup()
    assert fresh.frames == 0 and not list_segments(fresh.folder)
    for i in range(10):
        fresh.add(i, i, i * TICKS, images[i], None)
    assert len(list(VideoReader(str(fresh.close())))) == 10


def test_kept_segments_are_the_recording_and_retention_removes_the_oldest(images, tmp_path):
    cfg = EncoderConfig(segment_s=0.4, keep_segments=True, retain_gb=0.00025)  # 250 kB
    recording = SegmentedRecording(tmp_path / "cam1.mp4", INFO, cfg, "cam1", "run1", max_pending=10)
    recording.setup()
    for i, image in enumerate(images):
        recording.add(i, i, i * TICKS, image, None)
    folder = recording.close()
    assert folder == tmp_path / "cam1" and not (tmp_path / "cam1.mp4").exists()
    kept = list_segments(folder)
    sizes = [s.path.stat().st_size for s in kept]
    assert len(kept) < 12 and sum(sizes) <= 250_000 + max(sizes)  # the newest always stays
    assert recording.pruned + len(kept) == kept[-1].counter  # numbered from 1; the encoder's last line says so (frames written are not kept)
    assert [s.first_seq for s in kept] == sorted(s.first_seq for s in kept)
    assert kept[-1].first_seq == 110  # the newest are kept, each playable on its own
    assert len(list(VideoReader(str(kept[-1].path)))) == 10
    # The next run adds to the recording, numbering on.
    again = SegmentedRecording(tmp_path / "cam1.mp4", INFO, cfg, "cam1", "run2", max_pending=10)
    again.setup()
    again.add(0, 0, 0, images[0], None)
    again.close()
    assert list_segments(folder)[-1].run == "run2" and list_segments(folder)[-1].counter > kept[-1].counter


def test_age_retention(images, tmp_path):
    cfg = EncoderConfig(segment_s=0.4, keep_segments=True, retain_hours=1)
    recording = SegmentedRecording(tmp_path / "cam1.mp4", INFO, cfg, "cam1", "run1", max_pending=10)
    recording.setup()
    for i, image in enumerate(images[:30]):
        recording.add(i, i, i * TICKS, image, None)
    old = list_segments(recording.folder)[0].path
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    for i in range(30, 45):
        recording.add(i, i, i * TICKS, images[i], None)
    recording.close()
    assert not old.exists() and len(list_segments(recording.folder)) >= 3
