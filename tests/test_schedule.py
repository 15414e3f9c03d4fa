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
        if schedule.wants(seq, seq):
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
    assert every.wants(0, 0) and not every.pending and every.wants(1, 1)
    strided = DetectionSchedule(3, True, 0.03)
    assert strided.wants(0, 0) and strided.pending
    strided.saw(0, walker(0))
    assert not strided.pending


def test_adaptive_looks_at_every_nth_frame_while_nobody_enters_or_leaves():
    # The first detection has nothing to compare with: the next frame is looked at too.
    assert looked_at(DetectionSchedule(3, True, 0.03), walker, 12) == [0, 1, 4, 7, 10]


def test_adaptive_looks_at_every_2nd_frame_while_someone_moves_fast_or_persons_overlap():
    def runner(seq):  # 12 px a frame: a fifth of their width
        return persons([100 + 12 * seq, 100, 160 + 12 * seq, 300])

    assert looked_at(DetectionSchedule(3, True, 0.03), runner, 12) == [0, 1, 3, 5, 7, 9, 11]

    def crossing(seq):  # two walkers, slow, side by side and overlapping by a third of their width
        return persons([200 + seq, 100, 260 + seq, 300], [240 + seq, 110, 300 + seq, 310])

    assert looked_at(DetectionSchedule(3, True, 0.03), crossing, 12) == [0, 1, 3, 5, 7, 9, 11]
    # One of them gone at frame 5 (a change: every frame), the other walking on slowly: the stride is back.
    assert looked_at(DetectionSchedule(3, True, 0.03), lambda seq: crossing(seq) if seq < 5 else walker(seq),
                     14) == [0, 1, 3, 5, 6, 9, 12]


def test_adaptive_looks_at_every_frame_while_a_person_enters_at_an_edge():
    def entering(seq):  # walks in from the left edge: their box grows by 8 px a frame
        return persons([200, 100, 260, 300], [0, 120, 10 + 8 * seq, 320]) if seq >= 4 else walker(0)

    # Every frame from the one they appear in, until their box grows by under 10% of its width a frame.
    assert looked_at(DetectionSchedule(3, True, 0.03), entering, 14) == [0, 1, 4, 5, 6, 7, 8, 9, 12, 13]


def test_adaptive_looks_again_at_once_when_persons_appear_or_a_detection_fails():
    schedule = DetectionSchedule(3, True, 0.03)
    looked_at(schedule, walker, 2)
    assert not schedule.wants(2, 2) and not schedule.wants(3, 3) and schedule.wants(4, 4)
    schedule.saw(4, persons([200, 100, 260, 300], [400, 100, 440, 200]))  # someone appeared mid-frame
    assert schedule.wants(5, 5)
    schedule.saw(5, None)  # the detection failed
    assert schedule.wants(6, 6)


def test_in_a_recording_a_person_flickering_in_and_out_away_from_the_edges_keeps_the_stride():
    """A score around the threshold (a far, still or half-hidden person) drops out of one detection and is
    found again where they were: neither entering nor leaving (the compositor's hold hides them meanwhile).
    On the street clip such flicker had 61% of the frames looked at, at stride 2."""
    standing = [300, 100, 340, 200]

    def flickering(seq):
        return persons([200 + 2 * seq, 100, 260 + 2 * seq, 300], *([standing] if seq % 6 < 3 else []))

    assert looked_at(DetectionSchedule(3, True, 0.03, recording=True), flickering, 14) == [0, 1, 4, 7, 10, 13]
    # Live (no frame waits for the ones after it), each change in their number has every frame looked at: what
    # is hidden longer stays unknown longer there (bench/privacy.py, street fast pan).
    assert looked_at(DetectionSchedule(3, True, 0.03), flickering, 14) == [0, 1, 4, 5, 8, 9, 10, 13]


def test_in_a_recording_a_person_gone_at_an_edge_or_new_mid_frame_has_every_frame_looked_at():
    schedule = DetectionSchedule(3, True, 0.03, recording=True)
    at_edge = [0, 120, 40, 320]
    schedule.wants(0, 0)
    schedule.saw(0, persons([200, 100, 260, 300], at_edge))
    assert schedule.wants(1, 1)
    schedule.saw(1, persons([200, 100, 260, 300], at_edge))
    assert not schedule.wants(2, 2) and not schedule.wants(3, 3) and schedule.wants(4, 4)
    schedule.saw(4, persons([200, 100, 260, 300]))  # the one at the edge is gone: leaving the picture
    assert schedule.wants(5, 5)
    schedule.saw(5, persons([200, 100, 260, 300], [500, 50, 540, 150]))  # someone new, never seen there
    assert schedule.wants(6, 6)
    schedule.saw(6, persons([200, 100, 260, 300], [500, 50, 540, 150]))  # still there: the stride again
    assert not schedule.wants(7, 7)


def came_at(*cells) -> np.ndarray:
    """A `Frame.came` map (36x64 cells of 10x10 px at SHAPE) with something come at each (column, row)."""
    came = np.zeros((36, 64), bool)
    for column, row in cells:
        came[row, column] = True
    return came


def test_adaptive_looks_at_a_frame_where_something_came_away_from_the_persons_known():
    # A person a third of the frame tall cut in for a frame changes under 2% of the picture (not `changed`);
    # where they came is away from the walker, whom nothing that far from their box could be.
    schedule = DetectionSchedule(3, True, 0.03)
    assert looked_at(schedule, walker, 5) == [0, 1, 4]
    assert schedule.wants(5, 5, came=came_at((50, 5), (50, 6)))
    schedule.saw(5, walker(5))
    # Where the walker walks (their box at frame 5 is x 210 to 270, y 100 to 300), their cells change: the stride
    # goes on. A cell just past their box is within the tenth of their width a frame they could have moved.
    assert not schedule.wants(6, 6, came=came_at((21, 12), (27, 20), (27, 29)))
    assert not schedule.wants(7, 7, came=came_at((28, 15)))
    assert schedule.wants(8, 8)
    schedule.saw(8, walker(8))
    assert schedule.wants(9, 9, came=came_at((40, 15)))  # 13 cells from them: someone else
    # A fixed stride is every Nth frame whatever changed.
    fixed = DetectionSchedule(3, False, 0.03)
    assert looked_at(fixed, walker, 3) == [0]
    assert not fixed.wants(4, 4, came=came_at((50, 5)))


def test_where_something_came_is_told_apart_from_a_moving_camera_on_real_texture():
    """Brick, windows, a bus and cobbles (bus.jpg) shaken by up to 1.5 px a frame (the street bench clip's): nothing
    came. A person a third of the frame tall cut in over them changes under 2% of the picture, too little to be
    `changed`; where they came is told."""
    import cv2

    from anonengine.sample import _load_sprite, make_street
    from anonengine.video import CHANGE_SHARE, ChangeFinder

    street = make_street(1280, 720)

    def view(dx: float, dy: float) -> np.ndarray:  # the camera moved by (dx, dy) px
        return cv2.warpAffine(street, np.float32([[1, 0, dx], [0, 1, dy]]), (1280, 720), borderMode=cv2.BORDER_REFLECT)

    finder = ChangeFinder()
    assert finder.look(view(0, 0)).cells is None  # a first frame: nothing to compare with
    for dx, dy in ((1.5, 0), (1.5, 1.5), (0.75, 0.75), (0, 0), (-1.5, 0), (-1.5, -1.5)):
        change = finder.look(view(dx, dy))
        assert not change.cells.any() and change.share < CHANGE_SHARE, (dx, dy)
    person = _load_sprite("bus_left", 240)
    cut_in = view(-1.5, -1.5)
    cut_in[100:340, 900 : 900 + person.shape[1]] = person
    change = finder.look(cut_in)
    assert change.share < CHANGE_SHARE
    rows, columns = np.nonzero(change.cells)
    assert len(rows) and rows.min() >= 100 * 36 // 720 and rows.max() <= 340 * 36 // 720, rows
    assert columns.min() >= 900 * 64 // 1280 and columns.max() <= (900 + person.shape[1]) * 64 // 1280, columns


def test_a_came_map_that_does_not_fill_its_shape_has_the_frame_looked_at():
    from anonengine.messages import PackedCells, pack_cells, unpack_cells

    came = came_at((3, 4))
    assert np.array_equal(unpack_cells(pack_cells(came)), came)
    assert unpack_cells(pack_cells(None)) is None
    for broken in (PackedCells((36, 64), b"\x00" * 10), PackedCells((10**6, 10**6), b""), PackedCells((0, 5), b"")):
        schedule = DetectionSchedule(3, True, 0.03)
        looked_at(schedule, walker, 2)
        assert schedule.wants(2, 2, came=unpack_cells(broken)), broken.shape


def test_a_files_last_frame_is_looked_at():
    schedule = DetectionSchedule(3, False, 0.03)
    assert looked_at(schedule, walker, 8) == [0, 3, 6]
    assert schedule.wants(8, 8, last=True)  # 8 is not a multiple of 3, but no detection comes after it


def test_a_break_in_the_stream_is_looked_at_on_both_sides_and_the_schedule_starts_over():
    """Across a break (recordings joined, a live camera's reconnection) persons jump: boxes from before and
    after it cover nobody between. Both sides are looked at, then the frame after, as at a stream's start."""
    for fixed in (False, True):
        schedule = DetectionSchedule(3, not fixed, 0.03)
        wanted = []
        for seq in range(14):
            if schedule.wants(seq, seq, at_break=seq in (7, 8)):
                wanted.append(seq)
                schedule.saw(seq, walker(seq if seq < 8 else seq - 8))
        assert {7, 8} <= set(wanted)
        if not fixed:
            assert wanted == [0, 1, 4, 7, 8, 9, 12]


def test_a_frame_offered_again_gets_its_first_decision_and_a_stream_begun_again_is_looked_at():
    schedule = DetectionSchedule(3, True, 0.03)
    first = looked_at(schedule, walker, 12)
    # After a restart the frames in flight come again: each as decided the first time, the schedule unmoved.
    assert [seq for seq in range(5, 12) if schedule.wants(seq, seq)] == [s for s in first if s >= 5]
    schedule.saw(7, walker(7))
    assert not schedule.wants(12, 12) and schedule.wants(13, 13)  # 3 after 10, the last frame wanted
    # Frame 2 with another timestamp was never seen: a stream that began again. Looked at, as what follows.
    assert schedule.wants(2, 1002)
    schedule.saw(2, walker(2))
    assert schedule.wants(3, 1003)


def test_a_schedule_taken_over_by_a_new_detector_decides_as_the_old_one_would_have():
    """A detector killed mid-stream: its successor reads the schedule back (through the one codec) and,
    given the frames in flight again, detects the same frames as an undisturbed run."""
    from anonengine import messages

    def entering(seq):
        return persons([200, 100, 260, 300], [0, 120, 10 + 8 * seq, 320]) if seq >= 6 else walker(seq)

    undisturbed = looked_at(DetectionSchedule(3, True, 0.03), entering, 30)
    old = DetectionSchedule(3, True, 0.03)
    looked_at(old, entering, 8)
    state = messages.decode(messages.encode(old.snapshot()))  # kept after each batch of detections
    assert old.wants(8, 8)  # then its detection was running when the detector died
    new = DetectionSchedule(3, True, 0.03)
    new.restore(state)
    assert not new.pending and new.last_decided == 7
    again = []
    for seq in range(4, 30):  # the frames in flight (4 to 7 answered already), then the rest of the stream
        if new.wants(seq, seq):
            again.append(seq)
            new.saw(seq, entering(seq))
    assert again == [s for s in undisturbed if s >= 4]


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


def test_a_fast_walkers_skeleton_moves_on_between_detections_though_their_boxes_hardly_overlap():
    """A user's trial: a walker at 19 px a frame, looked at every 3rd frame, overlapped their next box by 0.30,
    under SAME_PERSON_IOU: taken for someone else, they were drawn where last seen, the skeleton stuttering."""
    cfg = AnonymizerConfig()
    cfg.detector.stride = 3
    compositor = Compositor(cfg)
    frame = np.full((*SHAPE, 3), 90, np.uint8)
    undetected = Detections.undetected(SHAPE)
    before, after = persons([100, 50, 169, 250]), persons([157, 50, 226, 250])  # 57 px on, IoU 0.10
    compositor.learn(frame, before)
    learnt = compositor.learn(frame, undetected, [undetected, after])  # 1 of the 3 frames to `after`
    joints = np.argwhere(np.abs(compositor.render(frame, learnt).astype(int) - JOINT_COLOR).max(axis=2) < 40)
    assert abs(joints[:, 1].mean() - (134.5 + 19)) < 3, joints[:, 1].mean()  # a third of the way, not held


def test_a_frame_between_detections_without_one_on_either_side_is_obscured():
    """A frame the schedule skipped needs a detection on either side: without one (a live camera stopped,
    a detection failed or came late, a compositor restarted), the frame goes out obscured, not guessed."""
    from anonengine.stages import CompositeStage
    from anonengine.video import Frame

    cfg = AnonymizerConfig()
    cfg.detector.stride = 2
    composite = CompositeStage(cfg)
    composite.start("cam", True, SHAPE[1], SHAPE[0])

    def frame(seq):
        return Frame("cam", seq, seq, 1, np.full((*SHAPE, 3), 90, np.uint8))

    skipped = Detections.undetected(SHAPE)
    after = persons([110, 50, 170, 250])
    # A compositor restarted: the frames in flight come again, the first of them between two detections.
    assert composite.learn(frame(0), skipped, [after]) is None
    assert composite.learn(frame(1), persons([100, 50, 160, 250]), [skipped]) is not None
    assert composite.learn(frame(2), skipped, [after]) is not None
    assert composite.learn(frame(3), skipped, []) is None  # the stream ended
    assert composite.learn(frame(4), skipped, [None]) is None  # the detection after it failed
    # A detection lost (failed, or later than its deadline): the one before it no longer brackets what follows.
    assert composite.learn(frame(5), persons([100, 50, 160, 250]), [skipped, after]) is not None
    assert composite.learn(frame(6), None, [after]) is None
    assert composite.learn(frame(7), skipped, [after]) is None
    assert composite.learn(frame(8), after, []) is not None


def test_a_stride_needs_the_next_detection_within_the_look_ahead():
    import pytest
    from pydantic import ValidationError

    cfg = AnonymizerConfig().model_dump()
    cfg["detector"]["stride"], cfg["hold"]["lookahead_frames"] = 3, 1
    with pytest.raises(ValidationError, match="lookahead_frames >= 2"):
        AnonymizerConfig.model_validate(cfg)


def test_the_default_stride_is_what_a_config_that_shortens_what_it_needs_allows():
    assert AnonymizerConfig().detector.stride == 3
    for off in ({"lookahead_frames": 0}, {"enabled": False}):
        assert AnonymizerConfig.model_validate({"hold": off}).detector.stride == 1
    assert AnonymizerConfig.model_validate({"hold": {"lookahead_frames": 1}}).detector.stride == 2
    assert AnonymizerConfig.model_validate({"hold": {"hold_frames": 2}}).detector.stride == 2


def test_a_lost_person_is_held_for_hold_frames_frames_at_a_stride_not_that_many_detections():
    """At stride 2 the tracker hears of every other frame. Held for 15 detections, a person who left
    stayed hidden 30 frames, over a background that could not be learnt meanwhile."""
    from anonengine.tracking import MaskHold

    cfg = AnonymizerConfig()
    hold = MaskHold(cfg.hold)
    box = [300, 100, 360, 300]
    held_until = None
    for frame in range(60):
        if frame % 2:
            found = Detections.undetected(SHAPE)
        else:
            found = persons(box) if frame < 20 else Detections.empty(SHAPE)
        out = hold.update(found)
        if frame >= 20 and len(out):
            held_until = frame
    assert 20 + cfg.hold.hold_frames - 2 <= held_until <= 20 + cfg.hold.hold_frames


def test_a_lost_persons_held_box_keeps_the_size_they_were_last_seen_at():
    """The Kalman filter extrapolates a box's size too: a far person's box, shorter in the last
    detections (a detector's boxes of a small person vary by a quarter), was predicted shorter still two
    frames on and left their feet out. A held box is at least as large as the last one matched."""
    from anonengine.tracking import MaskHold

    cfg = AnonymizerConfig()
    cfg.hold.grow_per_frame = 0  # the size alone, without the margin that grows per frame lost
    hold = MaskHold(cfg.hold)
    for frame, bottom in enumerate((300, 292, 284, 276, 268, 260)):
        hold.update(persons([300, 100, 340, bottom]) if frame % 2 == 0 else Detections.undetected(SHAPE))
    hold.update(Detections.undetected(SHAPE))
    out = hold.update(Detections.empty(SHAPE))  # lost, two frames after the last match
    heights = out.boxes[:, 3] - out.boxes[:, 1]
    assert len(out) and heights.max() >= 260 - 100


def test_an_unreadable_frame_is_decided_afresh_when_it_comes_again():
    """A wanted frame whose slot was gone when the detector read it (its capture restarted) comes again;
    the schedule then decides as if it had not come before, and meanwhile holds nothing back."""
    undisturbed = looked_at(DetectionSchedule(3, True, 0.03), walker, 12)
    schedule = DetectionSchedule(3, True, 0.03)
    looked_at(schedule, walker, 7)
    assert schedule.wants(7, 7) and schedule.pending
    schedule.withdraw(7, 7)
    assert not schedule.pending
    again = []
    for seq in range(7, 12):  # 7 offered again, then the rest of the stream
        if schedule.wants(seq, seq):
            again.append(seq)
            schedule.saw(seq, walker(seq))
    assert again == [s for s in undisturbed if s >= 7]


def test_frames_decided_so_long_ago_that_they_are_forgotten_are_looked_at_and_move_nothing():
    """A restarted capture resumes after the last frame on disk, which may be further back than the decisions
    remembered (the encoder held frames not written yet): those frames are looked at (the compositor has them
    already and drops the answers), and every frame after them is decided as in an undisturbed run."""
    def entering(seq):
        return persons([200, 100, 260, 300], [0, 120, 10 + 8 * seq, 320]) if 20 <= seq < 26 else walker(seq)

    undisturbed = looked_at(DetectionSchedule(2, True, 0.03), entering, 60)
    schedule = DetectionSchedule(2, True, 0.03, remember=10)
    looked_at(schedule, entering, 41)
    assert schedule.wants(41, 41) and schedule.pending  # its detection ran when the capture died
    assert not schedule.can_decide(42, 42) and schedule.can_decide(5, 5)  # a forgotten frame waits for nothing
    again = []
    for seq in range(5, 60):  # from the last frame on disk: forgotten, then remembered (32 to 41), then new
        if schedule.wants(seq, seq):
            again.append(seq)
            schedule.saw(seq, entering(seq))
    assert again[:27] == list(range(5, 32))
    assert again[27:] == [s for s in undisturbed if s >= 32]
