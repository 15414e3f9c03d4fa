"""Which frames of a camera the detector looks at: `detector.stride`, fixed or adaptive.

Between two detections the compositor hides each person where they were and where they will be (the
boxes of the detections on either side, held by the tracker and grown), which covers anyone walking
from one box to the other. What that cannot cover is a person who is not in both: someone entering
or leaving, or a detection that fails. So an adaptive schedule looks at every frame while the last
detection shows such a change; at every 2nd while someone moves fast or persons overlap (a pair crossing
can come out of a detection as one box, and the way a fast person turns between detections is a guess);
and otherwise at every `stride`-th frame. A fixed one looks at every `stride`-th frame always.

The decision for a frame depends only on the detections of the frames before it, so the engine and
`--inline` skip the same frames and give the same pixels; the engine's detector therefore holds a
camera's next frame back while a detection of that camera is still running (`pending`).

A frame offered again (a capture, detector or encoder restarted, and the frames in flight sent again)
gets the decision it got the first time: the schedule remembers the last `REMEMBERED` decisions, by
frame and timestamp, and a detector that restarts reads back its predecessor's schedule (`snapshot`,
`restore`). So a restart does not change which frames are detected, nor the output's pixels.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np

from anonengine.detections import Detections, box_iou
from anonengine.messages import ScheduleState, pack_detections, unpack_detections

# A person of the last detection is new (or moved too far to be told from a new one) when no box of the
# detection before overlaps them this much; stride 3 of a walking person far away overlaps by about 0.5.
SAME_PERSON_IOU = 0.3
# A box at a frame edge (within `edge` of the frame's size) that changed by more than this share of its
# size since the detection before is a person entering or leaving: half of them is not in the picture.
EDGE_CHANGE = 0.1
# Decisions remembered, for frames offered again, unless told how many frames a camera has in flight.
REMEMBERED = 512
# In a recording, a person missing from a detection and found again where one of the last RECENT detections
# had them (IoU at least SAME_PLACE_IOU), away from the edges, neither left nor entered: a score around the
# threshold (a far, still or half-hidden person) flickers in and out of the detections, and the compositor's
# hold hides them meanwhile, at any stride. On the street clip such flicker had 61% of the frames looked at.
# Not so where frames do not wait for the ones after them (live): there what is hidden longer stays unknown
# longer (bench/privacy.py, street fast pan: known err 2.9 to 3.6 grey levels, past issue 11's 3).
RECENT = 4
SAME_PLACE_IOU = 0.5
# A person whose box moved (a corner) by more than this share of its width a frame since the detection before
# moves fast; a walker across a 720p street moves about 0.03 of their width a frame, the test clips' crossing
# pair up to 0.5 (where stride 3 showed one of them to the audit's detector, and stride 2 nobody).
FAST_MOTION = 0.1
# Two persons overlap when their boxes share this much of the smaller one's area.
OVERLAP = 0.05
CAREFUL_STRIDE = 2  # the stride while someone moves fast or persons overlap


class DetectionSchedule:
    """One camera's schedule: `wants(seq, pts)` for each frame in order; `saw(seq, detections)` for each frame
    it wanted, once its detections (None: the detection failed) are known."""

    def __init__(self, stride: int, adaptive: bool, edge: float, remember: int = REMEMBERED,
                 recording: bool = False) -> None:
        self.stride, self.adaptive, self.edge, self.remember = stride, adaptive, edge, remember
        self.recording = recording  # frames wait for the ones after them: flicker is no change (RECENT)
        self.last_seq: int | None = None  # the last frame wanted
        self.last_decided: int | None = None  # the last frame decided, wanted or not
        self.awaiting: int | None = None  # the last frame wanted, until its detections are known
        self.known: Detections | None = None  # the last detections known
        self.known_seq: int | None = None  # their frame
        self.recent: deque[np.ndarray] = deque(maxlen=RECENT)  # the boxes of the last detections known
        self.gap = 1  # frames from the last detection to the next: 1 while someone enters or leaves
        self.decided: dict[tuple[int, int], bool] = {}  # (seq, pts) -> wanted, the latest `remember` frames
        self.forgotten_to = -1  # the last frame whose decision was let go (decisions go oldest first)
        self._before_awaited: tuple[int | None, int | None] = (None, None)  # (last_seq, last_decided) before it

    @property
    def pending(self) -> bool:
        """Whether the next frame's decision waits for a detection still running. At stride 1 every frame is
        wanted whatever a detection finds: nothing need wait for it, and a camera's frames batch together."""
        return self.awaiting is not None and self.stride > 1

    def can_decide(self, seq: int, pts: int) -> bool:
        """Whether `wants` can answer for the frame now: not while a detection it depends on is running, unless
        the frame was decided before (offered again; it may be the very frame awaited)."""
        return not self.pending or (seq, pts) in self.decided or self._forgotten(seq)

    def wants(self, seq: int, pts: int, last: bool = False, at_break: bool = False, changed: bool = False,
              came: np.ndarray | None = None) -> bool:
        """Whether to detect frame `seq` (at `pts`). A frame offered again gets the decision it got before; one
        decided so long ago that its decision is forgotten is looked at, the schedule unmoved. An earlier frame
        not seen before (a stream that began again) is looked at, as what follows it is, until the detections
        tell again who is there; so is a file's `last` frame: no detection after it tells where a person went,
        and a frame `at_break` (either side of a break in the stream), after which the schedule starts over:
        persons jump across a break, and boxes from either side of it do not cover them. An adaptive schedule looks
        at a frame where part of the picture `changed` at once too (`Frame.changed`): someone cut in for two frames
        over the same scene, or sprinting across it, was between two detections and in neither; and at a frame where
        something `came` (`Frame.came`) away from the persons known (`came_apart`): a person a third of the
        picture's height cut in for a frame changes too little of it to be `changed`."""
        key = (seq, pts)
        if key in self.decided:
            return self.decided[key]
        if self._forgotten(seq):
            # A restarted capture resumes after the last frame on disk, which can be further back than the
            # frames remembered (the encoder holds frames it has not written yet): frames composited already,
            # whose answers the compositor drops. Deciding them afresh would move the schedule back to them and
            # change the decisions of the frames still to come (and so the output's pixels).
            return True
        if (self.last_seq is not None and seq <= self.last_seq) or at_break:
            self.known, self.gap = None, 1  # what came before is not what comes now: start over
            self.recent.clear()
        if (self.stride == 1 or self.known is None or last
                or self.adaptive and (changed or came_apart(came, self.known, seq - self.known_seq))):
            wanted = True
        elif not self.adaptive:
            wanted = seq % self.stride == 0
        else:
            wanted = seq - self.last_seq >= self.gap
        if wanted:
            self._before_awaited = (self.last_seq, self.last_decided)
            self.last_seq = self.awaiting = seq
        self.last_decided = seq
        self.decided[key] = wanted
        if len(self.decided) > self.remember:
            oldest = next(iter(self.decided))
            del self.decided[oldest]
            self.forgotten_to = max(self.forgotten_to, oldest[0])
        return wanted

    def _forgotten(self, seq: int) -> bool:
        """Whether frame `seq` (not remembered) was decided once and its decision let go: at or before the last
        frame let go (a frame withdrawn and decided again is remembered after the frames that followed it)."""
        return seq <= self.forgotten_to

    def saw(self, seq: int, detections: Detections | None) -> None:
        if seq != self.awaiting:
            return  # an older frame's answer (offered again): the schedule has moved on
        self.awaiting = None
        known_seq, self.known_seq = self.known_seq, seq
        if (detections is None or self.known is None
                or changing(self.known, detections, self.edge, tuple(self.recent) if self.recording else None)):
            self.gap = 1
        elif moving_fast(self.known, detections, seq - known_seq) or overlapping(detections):
            self.gap = min(self.stride, CAREFUL_STRIDE)
        else:
            self.gap = self.stride
        self.known = detections
        if detections is None:
            self.recent.clear()
        else:
            self.recent.append(detections.boxes.reshape(-1, 4).copy())

    def withdraw(self, seq: int, pts: int) -> None:
        """The awaited frame could not be read (its slot reused, its capture gone): the capture offers it
        again, and then it is decided afresh, as if it had not come yet; the frames after it wait no more.
        (Treated as a failed detection, it made the frames after it detected as at a stream's start, where
        a run without the restart skipped some.) A frame offered again that is unreadable keeps its decision."""
        if seq == self.awaiting:
            del self.decided[(seq, pts)]
            self.awaiting = None
            self.last_seq, self.last_decided = self._before_awaited

    def snapshot(self) -> ScheduleState:
        """The schedule's state between detections, for a successor (`restore`); outlines left out (`changing`
        compares boxes)."""
        known = None if self.known is None else pack_detections(replace(self.known, masks=None))
        return ScheduleState(self.last_seq, self.gap, known,
                             tuple((seq, pts, wanted) for (seq, pts), wanted in self.decided.items()),
                             tuple(tuple(map(float, boxes.ravel())) for boxes in self.recent))

    def restore(self, state: ScheduleState) -> None:
        """A predecessor's state, as it kept it after its last batch. A frame decided after that (it died
        detecting it) comes again and is decided afresh from the same state: the same way."""
        self.last_seq, self.gap = state.last_seq, state.gap
        self.known_seq = state.last_seq  # kept between detections: the last frame wanted is the one known
        self.known = None if state.known is None else unpack_detections(state.known)
        self.recent = deque((np.array(boxes, np.float32).reshape(-1, 4) for boxes in state.recent), maxlen=RECENT)
        self.decided = {(seq, pts): wanted for seq, pts, wanted in state.decided[-self.remember:]}
        # What the predecessor had let go is not in its state: every frame before the oldest it kept.
        self.forgotten_to = min((seq for seq, _ in self.decided), default=0) - 1
        self.last_decided = max((seq for seq, _ in self.decided), default=None)
        self.awaiting = None


def came_apart(came: np.ndarray | None, known: Detections, frames: int) -> bool:
    """Whether something came (`Frame.came`, a bool map of the frame's cells) in a cell that no person known
    `frames` frames before could have reached: none's box, grown by FAST_MOTION of its width a frame, touches it.
    Where the persons known walk, their cells change; elsewhere, something came that the detector has not seen."""
    if came is None or not came.any():
        return False
    rows, columns = came.shape
    height, width = known.frame_shape
    apart = came.copy()
    for x0, y0, x1, y1 in known.boxes.reshape(-1, 4):
        reach = FAST_MOTION * (x1 - x0) * max(1, frames)
        apart[max(0, int((y0 - reach) * rows // height)) : max(0, math.ceil((y1 + reach) * rows / height)),
              max(0, int((x0 - reach) * columns // width)) : max(0, math.ceil((x1 + reach) * columns / width))] = False
    return bool(apart.any())


def changing(before: Detections, now: Detections, edge: float, recent: tuple[np.ndarray, ...] | None = None) -> bool:
    """Whether persons entered, left or appeared between two detections: any change in their number, one found
    now that the detection before did not have, or one at an edge whose box changed by more than EDGE_CHANGE
    (half in the picture). With the `recent` detections' boxes (a recording), their number alone is no change:
    one found again where a recent detection had them, away from the edges, did not come; one gone away from
    the edges was missed (the compositor's hold hides them), one gone at an edge left."""
    if recent is None and len(before) != len(now):
        return True
    h, w = now.frame_shape

    def at_edge(boxes: np.ndarray) -> np.ndarray:
        return ((boxes[:, 0] <= edge * w) | (boxes[:, 1] <= edge * h)
                | (boxes[:, 2] >= (1 - edge) * w) | (boxes[:, 3] >= (1 - edge) * h))

    iou = box_iou(now.boxes, before.boxes).reshape(len(now), len(before))
    new = iou.max(axis=1, initial=0.0) < SAME_PERSON_IOU
    if new.any():
        seen = np.concatenate([np.zeros((0, 4), np.float32), *(recent or ())])
        found_again = (box_iou(now.boxes, seen).reshape(len(now), len(seen)).max(axis=1, initial=0.0)
                       >= SAME_PLACE_IOU) & ~at_edge(now.boxes)
        if (new & ~found_again).any():
            return True
    gone = iou.max(axis=0, initial=0.0) < SAME_PERSON_IOU
    if (gone & at_edge(before.boxes)).any():
        return True
    kept = ~new
    if not kept.any():
        return False
    matched = before.boxes[iou[kept].argmax(axis=1)]
    boxes = now.boxes[kept]
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0)
    grown = (np.abs(boxes - matched) / np.tile(size, 2)).max(axis=1) > EDGE_CHANGE
    return bool((grown & at_edge(boxes)).any())


def moving_fast(before: Detections, now: Detections, frames: int) -> bool:
    """Whether a person of `now`, the same as one of `before` (`frames` earlier), moved a corner of their box by
    more than FAST_MOTION of its width a frame."""
    if not len(before) or not len(now):
        return False
    iou = box_iou(now.boxes, before.boxes).reshape(len(now), len(before))
    same = iou.max(axis=1) >= SAME_PERSON_IOU
    if not same.any():
        return False
    boxes, matched = now.boxes[same], before.boxes[iou[same].argmax(axis=1)]
    width = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    return bool((np.abs(boxes - matched).max(axis=1) / width > FAST_MOTION * max(frames, 1)).any())


def overlapping(detections: Detections) -> bool:
    """Whether two persons' boxes share more than OVERLAP of the smaller one's area."""
    boxes = detections.boxes.reshape(-1, 4)
    if len(boxes) < 2:
        return False
    tl = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    br = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    shared = np.prod(np.clip(br - tl, 0, None), axis=2)
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6), axis=1)
    share = shared / np.minimum(area[:, None], area[None, :])
    np.fill_diagonal(share, 0)
    return bool((share > OVERLAP).any())
