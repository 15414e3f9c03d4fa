"""Mask hold: a person the detector loses for a few frames stays hidden where the tracker predicts them.

Per-frame anonymizers let a face "slip into 1 or 2 frames" whenever the detector misses. Here each
camera's persons are tracked with ByteTrack (Roboflow's `trackers`: NumPy and SciPy, so a compositor
loads no PyTorch); while a track is lost (up to `hold_frames`), its Kalman-predicted box is added to
the frame's persons as a box-only person, grown by `grow_per_frame` of its size for every frame it
has been lost, since the prediction gets less sure.
A person still tracked is also hidden at their previous box, so that a box shrinking suddenly (the
one behind, where two overlap) never uncovers them.
It is hidden like any detection (for `bbox` and `seg` alike) but gets no skeleton.
"""

from __future__ import annotations

import numpy as np

from anonengine.config import HoldConfig
from anonengine.detections import NUM_KEYPOINTS, Detections, box_iou

LOOKAHEAD_MIN_IOU = 0.2
TRACK_MIN_IOU = 0.2  # what Ultralytics' ByteTrack matches on (its match_thresh 0.8 is a cost, 1 - IoU)
TRACKER_RATE = 30.0  # the tracker's frames per second: its budgets are in 30-fps frames


class MaskHold:
    def __init__(self, cfg: HoldConfig) -> None:
        import supervision
        from trackers import ByteTrackTracker

        self.cfg = cfg
        self._detections = supervision.Detections
        # frame_rate 30 makes `lost_track_buffer` a number of frames (the library counts it in 30-fps frames).
        self.tracker = ByteTrackTracker(
            lost_track_buffer=cfg.hold_frames, frame_rate=TRACKER_RATE, track_activation_threshold=cfg.track_thresh,
            high_conf_det_threshold=cfg.track_thresh, minimum_iou_threshold=TRACK_MIN_IOU,
            minimum_consecutive_frames=2,
        )  # fmt: skip
        # Ages count frames, not detections: with a stride the tracker hears of every 2nd or 3rd frame, and
        # a lost person held for `hold_frames` detections would stay hidden two or three times as long, over
        # a background never learnt again. So each update carries its frame's time (1/30 s a frame, which
        # the tracker's Kalman steps and its lost-track budget count in), the budget half a frame over
        # `hold_frames` so that sums of 1/30 rounding up never drop a track a frame early.
        self.tracker.maximum_time_without_update = (cfg.hold_frames + 0.5) / TRACKER_RATE
        self.frame = -1  # frames this hold has seen
        # Each track's box when last matched, keyed by identity with the tracklet held (its id cannot go to
        # another meanwhile): a lost track is held at least that size, since the Kalman filter extrapolates a
        # box's size as well as its place, and a detector's boxes of a small person vary in height by a
        # quarter from frame to frame: predicted two frames on (a stride), one shrank off a person's feet.
        self.last_seen: dict[int, tuple[object, np.ndarray]] = {}
        self.coasted = 0  # frames since the last detection (detector.stride)

    def update(self, detections: Detections) -> Detections:
        """`detections` plus the predicted boxes of persons lost within the hold window.

        A frame the detector did not look at (`detected` False) leaves the tracker as it is: every
        track, new ones too, is hidden at its last box, grown for the frames since it was seen.
        """
        self.frame += 1
        if not detections.detected:
            self.coasted += 1
            return with_extra_boxes(detections, self.coasting_boxes(detections.frame_shape))
        self.coasted = 0

        # Keyed by identity, the tracklet held too: a pruned one's id could otherwise go to a new one.
        before = {id(t): (t, t.get_state_bbox().copy()) for t in self.tracker.tracks if t.time_since_update == 0}
        self.tracker.update(self._detections(xyxy=detections.boxes.astype(np.float32).reshape(-1, 4),
                                             confidence=detections.scores.astype(np.float32)),
                            timestamp=self.frame / TRACKER_RATE)
        # A person found again is also hidden where they were the frame before: where persons overlap,
        # the detector's box for the one behind can shrink by more than their step (measured: 5 px of
        # a 40-px-wide person, 1% of them shown), and a box never shrinks faster than a person moves.
        followed = [before[id(t)][1] for t in self.tracker.tracks if t.time_since_update == 0 and id(t) in before]
        alive = {id(t) for t in self.tracker.tracks}
        self.last_seen = {key: seen for key, seen in self.last_seen.items() if key in alive}
        self.last_seen.update((id(t), (t, t.get_state_bbox().copy())) for t in self.tracker.tracks
                              if t.time_since_update == 0)
        held = np.concatenate([self.held_boxes(detections.frame_shape),
                               np.array(followed, np.float32).reshape(-1, 4)])
        if not len(held):
            return detections
        return with_extra_boxes(detections, held)

    def pass_frame(self) -> None:
        """A frame not learnt (it went out obscured): the tracker's clock goes on all the same."""
        self.frame += 1
        self.coasted += 1

    def held_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        """Lost tracks (the library keeps only confirmed ones once lost) at their predicted boxes."""
        aged = [(self._held_box(t), frames_lost(t)) for t in self.tracker.tracks]
        return self._grown([(box, age) for box, age in aged if 0 < age <= self.cfg.hold_frames], shape)

    def coasting_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        aged = [(self._held_box(t), frames_lost(t) + self.coasted) for t in self.tracker.tracks]
        return self._grown([(box, age) for box, age in aged if age <= self.cfg.hold_frames], shape)

    def _held_box(self, track) -> np.ndarray:
        """Where a track is predicted, at least the size it had when last matched (its place there would
        be stale by the camera's motion since: a fast pan smeared it over the background)."""
        predicted = track.get_state_bbox()
        seen = self.last_seen.get(id(track))
        if seen is None:
            return predicted
        center = (predicted[:2] + predicted[2:]) / 2
        half = np.maximum(predicted[2:] - predicted[:2], seen[1][2:] - seen[1][:2]) / 2
        return np.concatenate([center - half, center + half])

    def _grown(self, boxes_and_age: list, shape: tuple[int, int]) -> np.ndarray:
        """Boxes grown by `grow_per_frame` of their size per frame of age, clipped to the frame."""
        h, w = shape
        boxes = []
        for (x0, y0, x1, y1), age in boxes_and_age:
            grow = self.cfg.grow_per_frame * age
            gx, gy = (x1 - x0) * grow, (y1 - y0) * grow
            box = np.array([x0 - gx, y0 - gy, x1 + gx, y1 + gy], np.float32)
            box[[0, 2]] = box[[0, 2]].clip(0, w)
            box[[1, 3]] = box[[1, 3]].clip(0, h)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
        return np.array(boxes, np.float32).reshape(-1, 4)

    def reset(self) -> None:
        self.tracker.reset()
        self.last_seen.clear()
        self.coasted = 0


def frames_lost(track) -> int:
    """Frames since the tracker last matched the track (0: matched at its last update)."""
    return round(track.time_since_update_seconds * TRACKER_RATE)


def with_extra_boxes(detections: Detections, boxes: np.ndarray) -> Detections:
    """Adds box-only persons with score 0 (hidden, never drawn)."""
    k = len(boxes)
    return detections.with_persons(boxes, np.zeros(k, np.float32), np.zeros((k, NUM_KEYPOINTS, 3), np.float32))


def lookahead_boxes(current: Detections, future: list[Detections]) -> np.ndarray:
    """Boxes where a person appears in the next frames: found there but not in the frame before.

    With a look-ahead of N frames, a person is hidden from up to N frames before the detector first
    sees them: the frames of a foot or a shoulder entering the picture, or of a detector that
    re-acquires someone late. A person already found moves on with their own boxes; their path ahead
    is not smeared over this frame.
    """
    new = []
    before = current.boxes
    for frame in future:
        if len(frame):
            fresh = frame.boxes
            if len(before):
                fresh = fresh[box_iou(fresh, before).max(axis=1) < LOOKAHEAD_MIN_IOU]
            new.append(fresh)
        before = frame.boxes
    return np.concatenate(new).astype(np.float32) if new else np.zeros((0, 4), np.float32)
