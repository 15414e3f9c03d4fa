"""Which frames of a camera the detector looks at: `detector.stride`, fixed or adaptive.

Between two detections the compositor hides each person where they were and where they will be (the
boxes of the detections on either side, held by the tracker and grown), which covers anyone walking
from one box to the other. What that cannot cover is a person who is not in both: someone entering
or leaving, or a detection that fails. So an adaptive schedule looks at every frame while the last
detection shows such a change, and otherwise at every `stride`-th frame; a fixed one at every
`stride`-th frame always.

The decision for a frame depends only on the detections of the frames before it, so the engine and
`--inline` skip the same frames and give the same pixels; the engine's detector therefore holds a
camera's next frame back while a detection of that camera is still running (`pending`).
"""

from __future__ import annotations

import numpy as np

from anonengine.detections import Detections, box_iou

# A person of the last detection is new (or moved too far to be told from a new one) when no box of the
# detection before overlaps them this much; stride 3 of a walking person far away overlaps by about 0.5.
SAME_PERSON_IOU = 0.3
# A box at a frame edge (within `edge` of the frame's size) that changed by more than this share of its
# size since the detection before is a person entering or leaving: half of them is not in the picture.
EDGE_CHANGE = 0.1


class DetectionSchedule:
    """One camera's schedule: `wants(seq)` for each frame in order; `saw(seq, detections)` for each frame
    it wanted, once its detections (None: the detection failed) are known."""

    def __init__(self, stride: int, adaptive: bool, edge: float) -> None:
        self.stride, self.adaptive, self.edge = stride, adaptive, edge
        self.last_seq: int | None = None  # the last frame wanted
        self.known: Detections | None = None  # the last detections known
        self.pending = False  # a frame wanted, its detections not known yet
        self.busy = True  # someone entering or leaving in the last detection: look at every frame

    def wants(self, seq: int, last: bool = False) -> bool:
        """Whether to detect frame `seq`. A frame at or before the last one wanted (a stream that began
        again, a frame offered again after a restart) is always looked at, and so is a file's `last` frame:
        no detection after it tells where a person went."""
        if self.last_seq is not None and seq <= self.last_seq:
            self.known, self.busy = None, True  # what came after is not what comes now: start over
        if self.stride == 1 or self.known is None or last:
            wanted = True
        elif not self.adaptive:
            wanted = seq % self.stride == 0
        else:
            wanted = seq - self.last_seq >= (1 if self.busy else self.stride)
        if wanted:
            # At stride 1 every frame is wanted whatever a detection finds: nothing need wait for it, and
            # a camera's frames batch together.
            self.last_seq, self.pending = seq, self.stride > 1
        return wanted

    def saw(self, seq: int, detections: Detections | None) -> None:
        if seq != self.last_seq:
            return  # an older frame's answer (a redelivery): the schedule has moved on
        self.pending = False
        self.busy = detections is None or self.known is None or changing(self.known, detections, self.edge)
        self.known = detections


def changing(before: Detections, now: Detections, edge: float) -> bool:
    """Whether persons entered, left or appeared between two detections."""
    if len(before) != len(now):
        return True
    if not len(now):
        return False
    iou = box_iou(now.boxes, before.boxes)
    if (iou.max(axis=1) < SAME_PERSON_IOU).any():
        return True
    h, w = now.frame_shape
    matched = before.boxes[iou.argmax(axis=1)]
    size = np.maximum(now.boxes[:, 2:] - now.boxes[:, :2], 1.0)
    grown = (np.abs(now.boxes - matched) / np.tile(size, 2)).max(axis=1) > EDGE_CHANGE
    at_edge = ((now.boxes[:, 0] <= edge * w) | (now.boxes[:, 1] <= edge * h)
               | (now.boxes[:, 2] >= (1 - edge) * w) | (now.boxes[:, 3] >= (1 - edge) * h))
    return bool((grown & at_edge).any())
