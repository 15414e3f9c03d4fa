"""Which frames the detector looks at (`detector.stride`, `stride_mode`), and what the frames between
show: the schedule is pure (no model, no process); the engine's equality with `--inline` under it is in
tests/test_engine.py, its privacy in bench/privacy.py."""

from __future__ import annotations

import numpy as np

from anonengine.compositor import JOINT_COLOR, Compositor
from anonengine.config import AnonymizerConfig
from anonengine.detections import Detections
from anonengine.schedule import DetectionSchedule

SHAPE = (360, 640)


def persons(*boxes, score: float = 0.9) -> Detections:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    keypoints = np.zeros((len(b), 17, 3), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(b):  # a column of joints down the middle of the box
        keypoints[i, :, 0] = (x0 + x1) / 2
        keypoints[i, :, 1] = np.linspace(y0 + 10, y1 - 10, 17)
        keypoints[i, :, 2] = 0.99
    return Detections(SHAPE, b, np.full(len(b), score, np.float32), keypoints)


def looked_at(schedule: DetectionSchedule, scene, frames: int) -> list[int]:
    """The frames `schedule` wants, each answered with `scene(seq)`."""
    wanted = []
    for seq in range(frames):
        if schedule.wants(seq):
            wanted.append(seq)
            schedule.saw(seq, scene(seq))
    return wanted


def walker(seq: int) -> Detections:
    return persons([200 + 2 * seq, 100, 260 + 2 * seq, 300])


def test_fixed_looks_at_every_nth_frame():
    assert looked_at(DetectionSchedule(3, False, 0.03), walker, 10) == [0, 3, 6, 9]
    assert looked_at(DetectionSchedule(1, True, 0.03), walker, 4) == [0, 1, 2, 3]


def test_only_a_stride_above_1_makes_a_camera_wait_for_its_detection():
    # The engine's detector holds a camera's next frame back while `pending`; at stride 1 that would only
    # stop a camera's frames from batching together.
    every = DetectionSchedule(1, True, 0.03)
    assert every.wants(0) and not every.pending and every.wants(1)
    strided = DetectionSchedule(3, True, 0.03)
    assert strided.wants(0) and strided.pending
    strided.saw(0, walker(0))
    assert not strided.pending


def test_adaptive_looks_at_every_nth_frame_while_nobody_enters_or_leaves():
    # The first detection has nothing to compare with: the next frame is looked at too.
    assert looked_at(DetectionSchedule(3, True, 0.03), walker, 12) == [0, 1, 4, 7, 10]


def test_adaptive_looks_at_every_frame_while_a_person_enters_at_an_edge():
    def entering(seq):  # walks in from the left edge: their box grows by 8 px a frame
        return persons([200, 100, 260, 300], [0, 120, 10 + 8 * seq, 320]) if seq >= 4 else walker(0)

    # Every frame from the one they appear in, until their box grows by under 10% of its width a frame.
    assert looked_at(DetectionSchedule(3, True, 0.03), entering, 14) == [0, 1, 4, 5, 6, 7, 8, 9, 12, 13]


def test_adaptive_looks_again_at_once_when_persons_appear_or_a_detection_fails():
    schedule = DetectionSchedule(3, True, 0.03)
    looked_at(schedule, walker, 2)
    assert not schedule.wants(2) and not schedule.wants(3) and schedule.wants(4)
    schedule.saw(4, persons([200, 100, 260, 300], [400, 100, 440, 200]))  # someone appeared mid-frame
    assert schedule.wants(5)
    schedule.saw(5, None)  # the detection failed
    assert schedule.wants(6)


def test_a_files_last_frame_is_looked_at():
    schedule = DetectionSchedule(3, False, 0.03)
    assert looked_at(schedule, walker, 8) == [0, 3, 6]
    assert schedule.wants(8, last=True)  # 8 is not a multiple of 3, but no detection comes after it


def test_a_frame_offered_again_or_a_stream_begun_again_is_looked_at():
    schedule = DetectionSchedule(3, True, 0.03)
    looked_at(schedule, walker, 8)
    assert schedule.wants(2)  # a frame at or before the last one wanted: after a restart, or a new stream
    schedule.saw(2, walker(2))
    assert schedule.wants(3)  # and what follows is looked at as at a stream's start


def test_frames_between_detections_show_the_skeleton_moved_on_not_blinking():
    cfg = AnonymizerConfig()
    cfg.detector.stride = 3
    compositor = Compositor(cfg)
    frame = np.full((*SHAPE, 3), 90, np.uint8)
    undetected = Detections.undetected(SHAPE)
    before, after = persons([100, 50, 160, 250]), persons([130, 50, 190, 250])
    compositor.learn(frame, before)
    learnt = compositor.learn(frame, undetected, [undetected, after])  # 1 of the 3 frames to `after`
    out = compositor.render(frame, learnt)
    joints = np.argwhere(np.abs(out.astype(int) - JOINT_COLOR).max(axis=2) < 40)
    assert len(joints), "no skeleton between detections"
    assert abs(joints[:, 1].mean() - 140) < 3  # a third of the way from x=130 to x=160
