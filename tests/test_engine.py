"""The multiprocess engine on real processes, sockets and shared memory, against the inline reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import LEAK_SHARE, records_so_far, shown_share, stage_pids

from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.launcher import Launcher
from anonengine.inline import anonymize_frames
from anonengine.recording import list_segments
from anonengine.sample import make_sample
from anonengine.shm import instance_segments
from anonengine.stages import CompositeStage, DetectStage
from anonengine.tap import SeqGaps, subscribe
from anonengine.video import VideoReader

WIDTH, HEIGHT, FRAMES = 320, 192, 24


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("engine_clip"), width=WIDTH, height=HEIGHT, frames=FRAMES)


def engine_config(tmp_path: Path, models_dir: Path, sources: dict[str, Path], **engine) -> EngineConfig:
    cfg = EngineConfig(
        cameras=[
            CameraConfig(name=name, source=str(src), output=str(tmp_path / f"{name}.mp4"),
                         metadata=str(tmp_path / f"{name}.jsonl"))
            for name, src in sources.items()
        ]
    )
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.engine.run_dir = str(tmp_path / "run")
    cfg.engine.exit_when_done = True
    cfg.engine.stats_interval_s = 0.2
    cfg.tap.endpoint = ""
    for key, value in engine.items():
        setattr(cfg.engine, key, value)
    return cfg


def reference_frames(clip_path: Path, cfg: EngineConfig) -> list[np.ndarray]:
    """The inline path's anonymized frames (before encoding): the same stages and the same timeline."""
    with DetectStage(cfg.anonymizer) as detect:
        frames = VideoReader(str(clip_path), "cam")
        composite = CompositeStage(cfg.anonymizer)
        ahead = composite.start("cam", False, frames.info.width, frames.info.height)  # a file: its future helps
        return [image for _, image, _ in anonymize_frames(frames, detect, composite, cfg.anonymizer.lookahead(False),
                                                         ahead=ahead)]


def collect_tap(endpoint: str, sink: list, stop: threading.Event, delay_s: float = 0.0) -> None:
    """One subscription for the whole run (one ended and made again would lose frames in between)."""
    for meta, image in subscribe(endpoint, hwm=1 if delay_s else 1000, until=stop):
        sink.append((meta, image.copy()))
        if delay_s:
            time.sleep(delay_s)


def run_with_tap(cfg: EngineConfig, delay_s: float = 0.0) -> tuple[Launcher, list]:
    """Runs the engine with one subscriber on its tap. Unless `delay_s` makes it slow on purpose, the
    tap queues every frame for it: a recording's last frames go out in a burst (the future fill's
    wait ends at once), faster than a subscriber reads them, and a live tap drops what it cannot queue."""
    if not delay_s:
        cfg.tap.hwm = 10000
    received: list = []
    stop = threading.Event()
    launcher = Launcher(cfg)
    launcher.start()

    def subscriber():
        collect_tap(cfg.tap.endpoint, received, stop, delay_s)

    thread = threading.Thread(target=subscriber, daemon=True)
    thread.start()
    try:
        launcher.run()
    finally:
        stop.set()
        thread.join(30)  # the subscriber reads what is still queued, then ends
    return launcher, received


@pytest.mark.parametrize(("stride", "mode"), [(1, "fixed"), (2, "fixed"), (3, "adaptive")])
def test_engine_frames_equal_the_inline_reference(clip, models_dir, tmp_path, stride, mode):
    """Raw frames from the tap are the inline path's frames: same stage code, same order, and with a
    stride the same frames detected (an adaptive schedule decides from what the detections before found).

    Tolerance: the detector runs batches of up to 4 frames in the engine and single frames inline;
    batched CPU convolutions can change scores and boxes in the last float bits, which can move a
    mask edge by a pixel. So: at most 0.1% of pixels of a frame may differ, and 99% of frames exact.
    """
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video})
    cfg.anonymizer.detector.stride, cfg.anonymizer.detector.stride_mode = stride, mode
    cfg.tap.endpoint = f"ipc://{tmp_path}/tap.sock"  # a TCP tap needs CURVE keys: tests/test_security.py
    cfg.tap.format = "raw"
    launcher, received = run_with_tap(cfg)
    reference = reference_frames(clip.video, cfg)
    seqs = [meta["seq"] for meta, _ in received]
    assert seqs == list(range(FRAMES)), "tap lost or reordered frames"
    assert not any(meta["obscured"] for meta, _ in received)
    # Between detections, persons are reported where they are between the two (interpolated).
    assert all(len(meta["persons"]) >= 2 for meta, _ in received)
    detected = [meta["seq"] for meta, _ in received if not meta["persons"][0].get("interpolated")]
    assert max(b - a for a, b in zip(detected, detected[1:])) <= stride
    if mode == "fixed":  # and the file's last frame: nothing detected after it would hide a person there
        assert detected == sorted({*range(0, FRAMES, stride), FRAMES - 1})
    differing = [np.count_nonzero((img != ref).any(axis=2)) / img[..., 0].size
                 for (_, img), ref in zip(received, reference)]
    assert max(differing) <= 0.001, differing
    assert sum(d == 0 for d in differing) >= 0.99 * FRAMES - 1
    assert launcher.done["cam"].frames == FRAMES


@pytest.mark.parametrize("stride", [1, 2])
def test_inline_detects_a_files_frames_in_batches_where_the_schedule_lets_them_wait(clip, models_dir, tmp_path,
                                                                                    stride):
    """A Ray worker or a batch runs the inline path: on a GPU, frames detected one by one leave it idle.
    At stride 1 a file's frames go to the detector `max_batch` at a time (torch: one forward pass), with
    the pixels of one at a time (the engine test's tolerance for batched CPU convolutions); with a
    stride, which frame is detected next depends on the last detection, so each runs alone."""
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video})
    cfg.anonymizer.detector.backend = "torch"  # exported models run one frame at a time whatever they get
    cfg.anonymizer.detector.stride, cfg.anonymizer.detector.stride_mode = stride, "fixed"
    cfg.anonymizer.background.future_frames = 8  # frames drawn before the clip's end, each after the 8 after it
    outputs, sizes = {}, []
    with DetectStage(cfg.anonymizer, max_batch=4) as detect:
        assert detect.detector.batches
        one_at_a_time = detect.process
        detect.process = lambda images, *aspects: sizes.append(len(images)) or one_at_a_time(images, *aspects)
        for batch in (1, 4):
            sizes.clear()
            frames = iter(VideoReader(str(clip.video)))
            composite = CompositeStage(cfg.anonymizer)
            ahead = composite.start("cam", False, WIDTH, HEIGHT)
            learnt, learnt_at_render = [], []
            learn, render = composite.learn, composite.render
            composite.learn = lambda frame, *rest, learnt=learnt, learn=learn: learnt.append(frame.seq) or learn(
                frame, *rest)
            composite.render = lambda frame, *rest, at=learnt_at_render, learnt=learnt, render=render: at.append(
                len(learnt)) or render(frame, *rest)
            outputs[batch] = [image for _, image, _ in anonymize_frames(
                frames, detect, composite, cfg.anonymizer.lookahead(False), ahead=ahead, batch=batch)]
            # Each frame drawn once the `ahead` frames after it were learnt, as the engine's compositor draws it:
            # a batch let 4 through at once, all learnt first, and the fill came of frames further on (a strip
            # of it unlike the engine's in 23 of a lamp clip's 100 frames).
            assert learnt_at_render == [min(seq + ahead + 1, FRAMES) for seq in range(FRAMES)], batch
    if stride == 1:
        assert sizes == [4] * (FRAMES // 4)
    else:
        assert sizes == [1] * len(range(0, FRAMES, stride)) + [1]  # and the file's last frame
    assert len(outputs[4]) == len(outputs[1]) == FRAMES
    differing = [np.count_nonzero((a != b).any(axis=2)) / a[..., 0].size for a, b in zip(outputs[4], outputs[1])]
    assert max(differing) <= 0.001, differing
    assert sum(d == 0 for d in differing) >= 0.99 * FRAMES - 1


def test_a_live_stop_right_after_a_skipped_frame_obscures_it(clip, models_dir, tmp_path):
    """A live camera stopped at stride 2 just after a frame the schedule skipped: no detection comes after
    it, so it goes out obscured (fail closed); the frames before it are anonymized as usual."""
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video})
    cfg.anonymizer.detector.stride, cfg.anonymizer.detector.stride_mode = 2, "fixed"
    offered = []

    def frames():
        for frame in VideoReader(str(clip.video)):
            offered.append(frame.seq)
            yield frame

    with DetectStage(cfg.anonymizer) as detect:
        composite = CompositeStage(cfg.anonymizer)
        composite.start("cam", True, WIDTH, HEIGHT)
        out = list(anonymize_frames(frames(), detect, composite, cfg.anonymizer.hold.lookahead_frames,
                                    stop=lambda: len(offered) > 12, flush_on_stop=True))
    assert [frame.seq for frame, _, _ in out] == list(range(12))  # frame 11, odd, was not detected
    *shown, (_, last_image, last_detections) = out
    assert last_detections is None and (last_image == 128).all()
    assert all(detections is not None for _, _, detections in shown)


def test_three_cameras_batched_and_shared_out_to_two_compositors_and_two_encoders_behind_one_tap(
    clip, models_dir, tmp_path
):
    sources = {f"cam{i}": clip.video for i in range(3)}
    cfg = engine_config(tmp_path, models_dir, sources, max_batch=4, max_wait_ms=50, composite_workers=2,
                        encode_workers=2)
    cfg.tap.endpoint = f"ipc://{tmp_path}/tap.sock"
    launcher, received = run_with_tap(cfg)
    for name in sources:
        assert [meta["seq"] for meta, _ in received if meta["camera"] == name] == list(range(FRAMES))
    written = {name: stats["frames"] for (stage, name), stats in launcher.stats.items() if stage == "encode"}
    assert sorted(written.values()) == [FRAMES, 2 * FRAMES]  # compositor N's cameras go to encoder N
    source_times = [f.time for f in VideoReader(str(clip.video))]
    for name in sources:
        frames = list(VideoReader(str(tmp_path / f"{name}.mp4")))
        assert [f.seq for f in frames] == list(range(FRAMES))
        assert [f.time for f in frames] == pytest.approx(source_times, abs=1e-3)
    detect_stats = launcher.stats[("detect", "w0")]
    batch_sizes = launcher.tally.histogram("detect", "batch_size")
    assert sum(batch_sizes.counts[1:]) > 0, batch_sizes  # some batches held frames of several cameras
    # Every frame was looked at or, between two detections (detector.stride), skipped; none failed.
    assert detect_stats["frames_ok"] + detect_stats.get("frames_skipped", 0) >= 3 * FRAMES
    assert not detect_stats.get("frames_failed")
    composited = {name: stats["frames"] for (stage, name), stats in launcher.stats.items() if stage == "composite"}
    assert sorted(composited.values()) == [FRAMES, 2 * FRAMES]  # each camera on one worker, both used
    assert not list(Path(cfg.engine.run_dir).glob("*/*.sock"))


def test_detector_killed_mid_run_is_restarted_and_no_frame_is_lost_or_raw(clip, models_dir, tmp_path):
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video}, redeliver_after_s=2.0, max_batch=1)
    launcher = Launcher(cfg)
    launcher.start()
    killed = threading.Event()

    def killer():
        detect = launcher.children["detect0"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if launcher.stats.get(("detect", "w0"), {}).get("frames_ok", 0) >= 5:
                os.kill(detect.process.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    launcher.run()
    assert killed.is_set()
    assert len(launcher.children["detect0"].restarts) == 1
    frames = list(VideoReader(str(tmp_path / "cam.mp4")))
    assert [f.seq for f in frames] == list(range(FRAMES))
    # Every output frame hides every person: nothing of the sprite is left inside its box.
    bg = clip.true_background().astype(int)
    for frame, truth, source in zip(frames, clip.boxes(), VideoReader(str(clip.video))):
        for p in truth:
            share = shown_share(source.image, frame.image, bg, p["box"])
            assert share <= LEAK_SHARE, f"frame {frame.seq} shows {p['actor']}"


def launch_subprocess(cfg: EngineConfig, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return subprocess.Popen([sys.executable, "-m", "anonengine.cli", "launch", str(path)],
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


STOP_TIMEOUT_S = 30  # the stated bound for SIGTERM to a running engine: every process gone


def test_sigterm_mid_run_stops_everything_and_leaves_playable_files_and_clean_shm(models_dir, tmp_path):
    long_clip = make_sample(tmp_path / "long", width=WIDTH, height=HEIGHT, frames=200)
    cfg = engine_config(tmp_path, models_dir, {"a": long_clip.video, "b": long_clip.video})
    cfg.engine.exit_when_done = False
    proc = launch_subprocess(cfg, tmp_path)
    # Both cameras under way before the stop: one stopped before its first frame has nothing to leave, and
    # waiting for "a" alone left that to the machine's load.
    assert wait_for(lambda: all(records_so_far(tmp_path / f"{name}.mp4") > 0 for name in "ab"), 120)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(STOP_TIMEOUT_S)
    assert wait_for(lambda: not stage_pids(f"p{proc.pid}"), 5), "stage processes outlived the launcher"
    assert time.monotonic() - started < STOP_TIMEOUT_S
    assert proc.returncode == 0
    for name in ("a", "b"):
        # Stopped mid-file: finalised and playable, but under the partial name, never the final one.
        assert not (tmp_path / f"{name}.mp4").exists()
        frames = list(VideoReader(str(tmp_path / f"{name}.partial.mp4")))
        assert 0 < len(frames) < 200
        assert [f.seq for f in frames] == list(range(len(frames)))
    assert instance_segments(f"p{proc.pid}") == []


def test_a_live_camera_with_kept_segments_records_like_an_nvr(models_dir, tmp_path):
    """`keep_segments`: the camera's recording is its folder of segments, each playable on its own while
    the engine runs, frames in order across them, the oldest pruned past `retain_gb`, nobody shown."""
    long_clip = make_sample(tmp_path / "long", width=WIDTH, height=HEIGHT, frames=200)
    cfg = engine_config(tmp_path, models_dir, {"door": long_clip.video})
    cfg.cameras[0].live = True  # a file replayed as a camera, at its frame rate (8 s), then it ends
    # A 1-s segment is about 150 kB here with its metadata (110 kB of video, 35 to 50 of metadata): the budget keeps
    # about four of the eight (at 300 kB the last two fitted only just, and held persons in the metadata tipped it)
    budget = 600_000
    cfg.encoder.segment_s, cfg.encoder.keep_segments, cfg.encoder.retain_gb = 1.0, True, budget / 1e9
    proc = launch_subprocess(cfg, tmp_path)
    folder = tmp_path / "door"
    try:
        assert wait_for(lambda: [p for p in folder.glob("*.mp4") if ".partial" not in p.name], 120)
        first = next(p for p in folder.glob("*.mp4") if ".partial" not in p.name)
        # Playable while the engine runs (how many frames a 1-s segment of a live camera holds depends on
        # what the machine keeps up with: a loaded one drops some, as a live camera must).
        assert len(list(VideoReader(str(first)))) > 0
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and not (tmp_path / "door.mp4").exists()
    segments = list_segments(folder)
    assert not list(folder.glob("*.partial.mp4")) and len(segments) >= 2
    assert sum(s.path.stat().st_size for s in segments) <= budget + max(s.path.stat().st_size for s in segments)
    seqs = []
    for segment in segments:
        records = [json.loads(line) for line in segment.metadata.read_text().splitlines()]
        assert len(list(VideoReader(str(segment.path)))) == len(records)
        seqs += [r["index"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The oldest were pruned, unless all of it fits: a live camera drops what the machine cannot keep up with,
    # and a slow 2-core machine wrote 170 kB in all (test_recording prunes written segments, whatever the speed).
    kept = sum(s.path.stat().st_size + s.metadata.stat().st_size for s in segments)
    assert segments[0].first_seq > 0 or kept <= budget
    background = long_clip.true_background()
    sources = [f.image for f in VideoReader(str(long_clip.video))]
    truth = long_clip.boxes()
    for segment in segments:
        for frame, record in zip(VideoReader(str(segment.path)),
                                 (json.loads(line) for line in segment.metadata.read_text().splitlines())):
            for person in truth[record["index"]]:
                assert shown_share(sources[record["index"]], frame.image, background, person["box"]) <= LEAK_SHARE


def test_after_kill_9_of_the_whole_tree_the_next_start_cleans_shm(clip, models_dir, tmp_path):
    cfg = engine_config(tmp_path, models_dir, {"a": clip.video})
    cfg.engine.exit_when_done = False
    proc = launch_subprocess(cfg, tmp_path)
    killed_instance = f"p{proc.pid}"
    assert wait_for(lambda: len(instance_segments(killed_instance)) >= 2, 120)
    # Every process at once (stages run in sessions of their own, and would clean up after a launcher
    # killed alone): nothing gets to remove its segments.
    for pid in [proc.pid, *stage_pids(killed_instance)]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: not stage_pids(f"p{proc.pid}"), 10)
    assert instance_segments(killed_instance), "the kill should have left segments behind"
    cfg.engine.exit_when_done = True
    launcher = Launcher(cfg)
    launcher.start()
    assert instance_segments(killed_instance) == []  # swept at start: its launcher is dead
    assert not (Path(cfg.engine.run_dir) / killed_instance).exists()
    launcher.run()
    assert instance_segments(launcher.instance) == []


def test_stages_of_a_launcher_killed_alone_leave_by_themselves_with_their_shared_memory(models_dir, tmp_path):
    """The launcher alone killed with -9 while a live camera runs: each stage drains as on a stop, and
    what it would wait for (frames in flight, whose other stages went too) no longer holds it past
    engine.stop_timeout_s: it leaves, removing its segments (a capture once looped for ever)."""
    long_clip = make_sample(tmp_path / "clip", width=WIDTH, height=HEIGHT, frames=500)
    cfg = engine_config(tmp_path, models_dir, {"cam": long_clip.video})
    cfg.cameras[0].live = True
    cfg.engine.exit_when_done = False
    cfg.engine.stop_timeout_s = 3
    proc = launch_subprocess(cfg, tmp_path)
    instance = f"p{proc.pid}"
    try:
        assert wait_for(lambda: records_so_far(tmp_path / "cam.mp4") > 5 or proc.poll() is not None, 120)
        assert proc.poll() is None and len(stage_pids(instance)) == 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not stage_pids(instance), cfg.engine.stop_timeout_s + 10), stage_pids(instance)
        assert instance_segments(instance) == []
    finally:
        for pid in stage_pids(instance):
            os.kill(pid, signal.SIGKILL)


def test_tap_delivers_every_frame_in_order_and_a_slow_subscriber_sees_gaps(models_dir, tmp_path):
    """A subscriber reading 5 frames/s from an engine making several times that: it misses frames
    mid-stream (and sees the gaps), and the engine still writes every frame."""
    # A recording's frames come out 74 behind the capture (its look-ahead and future fill): a clip of 80 put
    # most of them out in one burst at its end, past a subscriber that had read 4 (CI saw no gap).
    frames = 160
    clip = make_sample(tmp_path / "clip", width=WIDTH, height=HEIGHT, frames=frames)
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video})
    # Over ipc and with raw frames, the kernel's socket buffers hold only a few frames beyond the
    # high-water marks (loopback TCP can buffer megabytes, and would hide the drops until the end).
    cfg.tap.endpoint = f"ipc://{tmp_path}/tap.sock"
    cfg.tap.format = "raw"
    cfg.tap.hwm = 1
    _, slow = run_with_tap(cfg, delay_s=0.2)
    gaps = SeqGaps()
    for meta, _ in slow:
        gaps.see(meta)
    seqs = [meta["seq"] for meta, _ in slow]
    assert seqs == sorted(seqs)
    assert gaps.missed > 0 and len(slow) < frames, (len(seqs), seqs)
    assert len(list(VideoReader(str(tmp_path / "cam.mp4")))) == frames  # the engine did not wait for it


def stall_detector(launcher: Launcher, seconds: float) -> threading.Event:
    """Once the detector has done 5 frames, freezes it (SIGSTOP, like a hung GPU) for `seconds`."""
    resumed = threading.Event()

    def stall():
        detect = launcher.children["detect0"].process
        wait_for(lambda: launcher.stats.get(("detect", "w0"), {}).get("frames_ok", 0) >= 5, 120)
        os.kill(detect.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(detect.pid, signal.SIGCONT)
        resumed.set()

    threading.Thread(target=stall, daemon=True).start()
    return resumed


def test_a_live_camera_faster_than_the_detector_is_thinned_at_the_door_and_anonymized_not_obscured(models_dir,
                                                                                                   tmp_path):
    """A file replayed as a live camera at 100 frames/s, more than any CPU's detector follows: the capture
    drops new frames, never numbered, while its frames in flight reach the admission limit. The frames let
    in are numbered without a gap, keep their neighbours' detections (the stride's frames between are
    hidden by them), and come out anonymized. Before, the oldest frames in flight were dropped, detected
    ones among them, and the frames between lost the detections on either side: on a 2-core machine a
    25-fps RTSP camera came out obscured in 86% of its frames (97% once its compositor was restarted)."""
    clip = make_sample(tmp_path / "clip", width=WIDTH, height=HEIGHT, frames=300, fps=100)
    cfg = engine_config(tmp_path, models_dir, {"cam": clip.video})
    cfg.cameras[0].live = True
    launcher = Launcher(cfg)
    launcher.start()
    launcher.run()
    assert launcher.stats[("capture", "cam")]["dropped_busy"] > 0
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(records))) and len(records) < 300
    obscured = sum(r["obscured"] for r in records)
    assert obscured <= 0.05 * len(records), f"{obscured} of {len(records)} frames obscured"
    sources = {f.pts: f for f in VideoReader(str(clip.video))}
    bg = clip.true_background().astype(int)
    truth = clip.boxes()
    frames = list(VideoReader(str(tmp_path / "cam.mp4")))
    assert len(frames) == len(records)
    for frame, record in zip(frames, records):
        source = sources[record["pts"]]
        for p in truth[source.seq]:
            assert shown_share(source.image, frame.image, bg, p["box"]) <= LEAK_SHARE, record


def test_a_stalled_detector_leads_to_obscured_frames_never_raw_ones(models_dir, tmp_path):
    """The detector is frozen (SIGSTOP, like a hung GPU) past the deadline: frames go out fully
    obscured and are counted; when it wakes, its late answers are ignored. No frame is raw."""
    long_clip = make_sample(tmp_path / "clip", width=WIDTH, height=HEIGHT, frames=60)
    cfg = engine_config(tmp_path, models_dir, {"cam": long_clip.video}, deadline_s=1.5, redeliver_after_s=60)
    launcher = Launcher(cfg)
    launcher.start()
    resumed = stall_detector(launcher, seconds=4)
    launcher.run()
    assert resumed.is_set()
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    frames = list(VideoReader(str(tmp_path / "cam.mp4")))
    assert [f.seq for f in frames] == list(range(60)) == [r["index"] for r in records]
    obscured = [r["index"] for r in records if r["obscured"]]
    stats = launcher.stats[("composite", "w0")]
    assert obscured and stats["obscured"] == len(obscured)
    # The count `anonengine run` says in its last line, the encoder's of its output.
    assert launcher.done["cam"].obscured == launcher.obscured_frames("cam") == len(obscured)
    # The late frames, and before them at most one frame between detections (detector.stride 2) whose next
    # detection came late: nothing told where a person went from the last one.
    assert stats["late"] <= len(obscured) <= stats["late"] + cfg.anonymizer.detector.stride - 1
    bg = long_clip.true_background().astype(int)
    for frame, record, truth, source in zip(frames, records, long_clip.boxes(), VideoReader(str(long_clip.video))):
        if record["obscured"]:
            assert np.abs(frame.image.astype(int) - 128).max() <= 3  # nothing of the picture
            continue
        for p in truth:
            share = shown_share(source.image, frame.image, bg, p["box"])
            assert share <= LEAK_SHARE, f"frame {frame.seq} shows {p['actor']}"


def test_a_live_camera_never_waits_it_drops_new_frames_and_nothing_goes_out_raw(models_dir, tmp_path):
    """A file replayed as a live camera (read at its frame rate) while the detector stalls: the capture
    keeps reading and drops the new frames while the engine is behind (counted), the compositor obscures
    what is late, and every frame written hides every person."""
    long_clip = make_sample(tmp_path / "clip", width=WIDTH, height=HEIGHT, frames=100)
    cfg = engine_config(tmp_path, models_dir, {"cam": long_clip.video}, ring_slots=6, live_deadline_s=1.0)
    cfg.cameras[0].live = True
    cfg.anonymizer.hold.lookahead_frames = 2
    launcher = Launcher(cfg)
    launcher.start()
    stall_detector(launcher, seconds=1.5)
    started = time.monotonic()
    launcher.run()
    assert launcher.stats[("capture", "cam")]["dropped_busy"] > 0
    records = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    frames = list(VideoReader(str(tmp_path / "cam.mp4")))
    assert 0 < len(frames) == len(records) < 100
    indexes = [r["index"] for r in records]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    sources = {f.seq: f for f in VideoReader(str(long_clip.video))}
    bg = long_clip.true_background().astype(int)
    truth = long_clip.boxes()
    for frame, record in zip(frames, records):
        source = sources[record["index"]]
        if record["obscured"]:
            assert np.abs(frame.image.astype(int) - 128).max() <= 3
            continue
        for p in truth[record["index"]]:
            assert shown_share(source.image, frame.image, bg, p["box"]) <= LEAK_SHARE, record["index"]
    assert time.monotonic() - started < 60


PHOTOS = 20


@pytest.mark.slow  # 20 12-MP photos through the engine, 22 s (the default run nears its 15 minutes)
def test_a_compositor_busy_with_large_photos_keeps_its_heartbeat_and_is_not_killed_as_hung(models_dir, tmp_path):
    """A file's last frames go through the compositor together (their look-ahead ends at once), each seconds of
    work at tens of megapixels: a 48-MP sequence's compositor was silent for longer than `stall_s` and killed
    as hung (the run went on after a restart, twice as long). It reports between frames now: `stall_s` made
    short here (3 s) for 20 12-MP photos of real persons, all drained at the end: seconds of work together, a
    second at most each (4 photos with `stall_s` 1.5 s, a frame's own work near it on two loaded cores, failed
    now and then, before this session's changes too)."""
    import cv2
    from ultralytics.utils import ASSETS

    bus = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (3000, 4000), interpolation=cv2.INTER_CUBIC)
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(PHOTOS):  # a hand-held camera: each shot a few pixels from the last
        shot = cv2.warpAffine(bus, np.float32([[1, 0, 3 * (number % 4)], [0, 1, number % 3]]), (3000, 4000),
                              borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(photos / f"p{number:02d}.jpg"), shot, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cfg = engine_config(tmp_path, models_dir, {"cam": photos / "p%02d.jpg"}, stall_s=3.0)
    launcher = Launcher(cfg)
    launcher.start()
    launcher.run()
    assert launcher.failure is None
    assert not [child.name for child in launcher.children.values() if child.restarts]
    assert launcher.done["cam"].frames == PHOTOS
    assert len(list(VideoReader(str(tmp_path / "cam.mp4")))) == PHOTOS
