"""Replaces persons by the reconstructed background and draws their skeletons.

`Compositor` holds one camera's state (its background model) and turns (frame, detections) into the
anonymized frame. It does not care which process it runs in: the inline runner and the engine's
composite stage use the same class, so their outputs are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from anonengine.background import MOTION_CELL_PX, BackgroundModel, View, blend_into
from anonengine.config import AnonymizerConfig
from anonengine.detections import COCO_SKELETON, Detections, overlap_of_smaller
from anonengine.masks import Region, frame_diagonal, grow_into_motion, person_mask, soft_regions, zones_mask
from anonengine.schedule import SAME_PERSON_IOU
from anonengine.tracking import (
    FOLLOW_GAP_FRAMES,
    MaskHold,
    first_sightings,
    lookahead_boxes,
    newly_found,
    same_person,
    with_extra_boxes,
)

LIMB_COLOR = (255, 170, 0)  # BGR
JOINT_COLOR = (0, 220, 255)
PERSON_LINE = 0.02  # a limb at most this share of the person's extent (6 px for a person 300 px tall)
OBSCURED_GREY = 128
# A held person's skeleton is left out where their box and one with a skeleton drawn (from the detections, or held
# before it) overlap by this share of the smaller: a second box the detector drew on one person (taller, taking in
# what is below them), or a track left on one when its box jumped, drew a second skeleton on them (the street
# clip: 26 of 141)
SAME_SKELETON_OVERLAP = 0.8
# Two confident boxes of one detection on one person (a second box, taller or cut short, NMS let through) each drew
# a skeleton on them, one over the other (the street clip: 6 frames). Such a box lies within the other by
# SAME_SKELETON_OVERLAP of the smaller, and the joints both see are a median of at most SAME_SKELETON_SPREAD of the
# smaller box's height apart (on that clip at most 0.095 for the same person, at least 0.28 for a person behind
# another); at least MIN_SHARED_JOINTS of them.
SAME_SKELETON_SPREAD = 0.15
MIN_SHARED_JOINTS = 3
# Letterbox bars: lines along the frame's edges that are dark and flat. A bar whose pixels all differ by no more
# than BAR_SPREAD levels holds no picture, and so nobody: it is kept as filmed (a faint silhouette in the dark
# would differ by more).
BAR_LEVEL = 32
BAR_SPREAD = 3

# The pixels of the frame `ahead` frames on within a box (x0, y0, x1, y1); None where they cannot be had.
FuturePixels = Callable[[int, tuple[int, int, int, int]], "np.ndarray | None"]


@dataclass(frozen=True)
class Learnt:
    """A frame learnt from, to be drawn: its mask's soft regions, who gets a skeleton, its place in the
    background, and who is reported in its metadata."""

    regions: list[Region]
    boxes: np.ndarray
    keypoints: np.ndarray
    view: View
    persons: Detections  # what the frame's metadata reports: the detector's persons, or moved on between two
    # The persons the hold hides with the skeleton they last had (`MaskHold.held_skeletons`), and which of `persons`
    # each is (-1: none, the detector did not find them)
    held: Detections | None = None
    held_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hidden: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # the boxes the mask hides
    # The patches hidden for what moves there beyond them (`mask.motion`), each look's (`grow_into_motion`)
    moved: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def meta(self) -> list[dict]:
        """The frame's persons as its metadata gives them: a person found too weakly for a skeleton of their own
        and drawn with the one they last had is `held`, with that one's keypoints; one not found, an entry of
        their own (score 0). (Listed twice, they were counted twice.)"""
        entries = self.persons.to_meta()
        for index, held in zip(self.held_of, self.held.to_meta(held=True) if self.held is not None else []):
            if index >= 0:
                entries[index].update(keypoints=held["keypoints"], held=True)
            else:
                entries.append(held)
        return entries

    def motion_meta(self) -> list[list[int]]:
        """The patches hidden for what moves there alone, as the frame's metadata gives them: [x0, y0, x1, y1] in
        pixels (a consumer counting persons sees who the detector found; these are the rest of what was hidden)."""
        return np.round(self.moved).astype(int).tolist()


class Compositor:
    """One camera's anonymizer: mask hold, background model, privacy zones.

    `future_frames`: frames a learnt frame may wait before `render` (a recording's, see
    `BackgroundConfig.future_frames`); 0 when each is drawn as soon as learnt.
    """

    def __init__(self, cfg: AnonymizerConfig, privacy_zones: list | None = None, future_frames: int = 0) -> None:
        self.cfg = cfg
        self.background = background_model(cfg.background, future_frames)
        self.future_frames = future_frames
        self.hold = (MaskHold(cfg.hold, cfg.detector.person_conf, cfg.pose.person_conf if cfg.pose.enabled else None)
                     if cfg.hold.enabled and cfg.hold.hold_frames > 0
                     else None)
        self.privacy_zones = privacy_zones or []
        self._last_found: Detections | None = None  # the last frame the detector looked at
        self._since_found = 0  # frames since then
        self._zones_mask: np.ndarray | None = None

    def has_detection(self, shape: tuple[int, int]) -> bool:
        """Whether a detection of this frame size came before (what a frame between detections is hidden by)."""
        return self._last_found is not None and self._last_found.frame_shape == shape

    def pass_obscured(self, detection_lost: bool) -> None:
        """A frame goes out obscured, unlearnt: time goes on for the hold and between detections. With
        `detection_lost` (its detection failed or came late) the detection before it no longer brackets the
        frames after it: until the next one, a frame not detected is obscured too."""
        self._since_found += 1
        if detection_lost:
            self._last_found = None
        if self.hold is not None:
            self.hold.pass_frame()

    def process(self, frame: np.ndarray, detections: Detections, future: list[Detections] = ()) -> np.ndarray:
        """The anonymized copy of `frame` (uint8 BGR); updates the background model.

        `future`: the detections of the next frames, when the caller holds them (look-ahead).
        """
        return self.render(frame, self.learn(frame, detections, future))

    def learn(self, frame: np.ndarray, detections: Detections, future: list[Detections] = (),
              future_pixels: FuturePixels | None = None) -> Learnt:
        """Hides `frame`'s persons and learns the background from the rest; `render` draws it, now or,
        for a recording, once the frames after it were learnt too.

        `future`: the next frames' detections in order, those the detector did not look at included;
        `future_pixels`: those frames' pixels (`FuturePixels`, 1 the next), where a person first found in one
        of them is looked at (`forget_found_later`).
        """
        if detections.frame_shape != frame.shape[:2]:
            raise ValueError(f"detections for a {detections.frame_shape} frame given a {frame.shape[:2]} frame")
        sighted = [(i + 1, f) for i, f in enumerate(future) if f.detected]
        upcoming = sighted[0] if sighted else None
        reported, detected = detections, detections.detected
        found_last = detections.boxes  # the last detection's boxes as found, in the order `reported` gives them
        found_before = self._last_found.boxes if self.has_detection(detections.frame_shape) else None
        if detected:
            self._last_found, self._since_found = detections, 0
        else:
            self._since_found += 1
            last = self._last_found if self.has_detection(detections.frame_shape) else None
            # Between two detections (detector.stride) a person is between where they were and where
            # they will be: hide both places (with look-ahead), not only the tracker's guess; and
            # draw them in between, so that their skeleton moves on rather than blinks.
            bracket = ([last.boxes] if last is not None else []) + ([upcoming[1].boxes] if upcoming else [])
            if bracket:
                detections = with_extra_boxes(detections, np.concatenate(bracket).reshape(-1, 4))
            if last is not None:
                between = in_between(last, upcoming, self._since_found)
                detections = detections.with_persons(between.boxes, between.scores, between.keypoints)
                reported, found_last = replace(between, detected=False), last.boxes
        if self.hold is not None:
            detections = self.hold.update(detections, frame)
        # Who is new in the frames to come is told against who is here now as found or moved on between two
        # detections, not against the boxes that bracket this frame: a person new in the next detection is
        # among those, held where found, and someone crossing fast (80 px a frame) showed at the edge they came
        # in by, in the frames before (their path traced back is hidden too, `lookahead_boxes`).
        found_later = first_sightings(reported, sighted)
        if sighted:
            ahead = lookahead_boxes(reported, sighted, self.cfg.hold.lookahead_frames, found_later)
            if len(ahead):
                detections = with_extra_boxes(detections, ahead)
        mask = person_mask(detections, self.cfg.method, self.cfg.mask)
        zones = self._zones(frame.shape[:2])
        found_mask = mask
        if zones is not None:
            found_mask = cv2.bitwise_or(mask, zones)
        # Only a detected frame is learnt from: between detections the mask is a guess from the boxes on
        # either side, and a person it missed would be learnt into the background. (It also saves the warp
        # onto the canvas: the engine's compositor took 40 against 44 ms a frame of the street clip.)
        cut = self.background.place(frame, found_mask)
        motion, moved = self.cfg.mask.motion, np.zeros((0, 4), np.float32)
        if not cut and (motion == "all" or (motion == "touching" and len(detections))):
            moving = self.background.moving(frame)
            if moving is not None:
                mask, moved = grow_into_motion(mask, moving, MOTION_CELL_PX, detections.boxes, self.cfg.mask)
        if zones is not None:
            cv2.bitwise_or(mask, zones, dst=mask)
        if detected:
            # From outside the persons found, as without `mask.motion`: what moves apart from them and stays (a door
            # opened, a bag put down) is taken on as before. Kept out of the model, a person's ghost there (learnt
            # while the detector missed them) would never fade, and be drawn over whoever comes by.
            self.background.learn(frame, found_mask)
        if cut and self.hold is not None:
            self.hold.reset()  # a scene cut: old tracks point at persons of another scene
        if detected and not cut:
            # Someone found now may have been learnt into the background while the detector missed them
            # (standing still): their own picture would be drawn over them. Every person, each detection: a
            # place forgotten is copied again from the first frame that misses them there. Those new since the
            # detection before are looked for around their place too (learnt there before, `_learnt_nearby`).
            self.background.forget_where_learnt(frame, reported.boxes, nearby=newly_found(reported.boxes, found_before))
        if found_later and future_pixels is not None and not cut:
            self._forget_found_later(found_later, future_pixels, frame.shape[:2])
        # Only confident persons get a skeleton; weaker ones are hidden, drawn with the confident skeleton they
        # had while the hold can believe it (lost ones too).
        posed = np.flatnonzero((detections.scores >= self.cfg.pose.person_conf) & self.cfg.pose.enabled)
        posed = posed[one_skeleton_a_person(detections.boxes[posed], detections.keypoints[posed],
                                            detections.scores[posed], self.cfg.pose.keypoint_conf)]
        boxes, keypoints = detections.boxes[posed], detections.keypoints[posed]
        learnt = Learnt(soft_regions(mask, self.cfg.mask), boxes, keypoints, self.background.view, reported,
                        hidden=detections.boxes, moved=moved)
        if self.hold is None:
            return learnt
        held, held_of = self.hold.held_skeletons(frame.shape[:2], found_last,
                                                 reported.scores >= self.cfg.pose.person_conf)
        held = _moved_on(held, held_of, reported)
        # One skeleton a person: none where one is drawn from the detection, and one of two held there (two tracks
        # on one person, a box the detector drew twice on them), the one the last detection found first.
        kept: list[int] = []
        for i in np.argsort(held_of < 0, kind="stable"):
            others = np.concatenate([boxes, held.boxes[kept]])
            if not len(others) or overlap_of_smaller(held.boxes[i : i + 1], others).max() < SAME_SKELETON_OVERLAP:
                kept.append(i)
        held, held_of = replace(held, boxes=held.boxes[kept], scores=held.scores[kept],
                                keypoints=held.keypoints[kept]), held_of[kept]
        if not len(held):
            return learnt
        return replace(learnt, boxes=np.concatenate([boxes, held.boxes]),
                       keypoints=np.concatenate([keypoints, held.keypoints]),
                       held=replace(held, detected=detected), held_of=held_of)

    def _forget_found_later(self, found_later: list[tuple[int, int, np.ndarray]], future_pixels: FuturePixels,
                            shape: tuple[int, int]) -> None:
        """Someone the detector first finds a few frames on, who stood where they are found before that (missed:
        at imgsz 320, a still figure half behind a pillar until frame 43 of the sample), was learnt into the
        background; the look-ahead hides their place in this frame, and a live camera's frame is drawn before
        that later frame is learnt (and forgets them): drawn back from the model, their place showed them as
        filmed, 8 frames each time. Their place is forgotten where the model shows what the later frame shows
        there: the person. (This frame's own pixels cannot tell: a place the person has not reached yet looks
        as the model learnt it too, and would be drawn from the fill for nothing.)"""
        for _, ahead, boxes in found_later:
            self.background.forget_where_shown(boxes, lambda core, ahead=ahead: future_pixels(ahead, core), shape,
                                               nearby=np.ones(len(boxes), bool))

    def render(self, frame: np.ndarray, learnt: Learnt) -> np.ndarray:
        """The anonymized copy of a learnt frame, with the background as known now."""
        return self.drawn(frame, learnt)[0]

    def drawn(self, frame: np.ndarray, learnt: Learnt) -> tuple[np.ndarray, Learnt]:
        """`render`, and what was learnt of the frame as drawn (a recording's is told what moves again then)."""
        if self.future_frames and learnt.regions:
            # Drawn after later frames were learnt: one that missed a person found here may have taught them
            # to the background again since, and the next detection has not forgotten it yet. (The check at
            # each detection stays: the frames waiting before it hide that person by its look-ahead boxes, not
            # by a person of their own to check; left to this check alone, 8 more frames of the soak's clip
            # showed them.)
            self.background.forget_where_learnt(frame, learnt.persons.boxes, learnt.view)
        if self.future_frames:
            learnt = self._moving_since(frame, learnt)
        out = frame.copy()
        boxes, keypoints = learnt.boxes, learnt.keypoints
        bars = letterbox(frame) if learnt.regions else None
        for region in learnt.regions:
            roi = out[region.slices]
            self.background.blend_into(roi, region.box, learnt.view, region.alpha)
            keep_bars(roi, frame[region.slices], region, bars, frame.shape)
            inside = ((boxes[:, 0] < region.x1) & (boxes[:, 2] > region.x0)
                      & (boxes[:, 1] < region.y1) & (boxes[:, 3] > region.y0))
            if inside.any():
                self._draw_pose(roi, region, keypoints[inside], frame.shape[:2])
        return out, learnt

    def _moving_since(self, frame: np.ndarray, learnt: Learnt) -> Learnt:
        """A recording's frame, drawn once the frames after it were learnt, is told what moves again (`mask.motion`):
        the model now knows places this frame was the first to show, or showed with someone standing there the
        detector missed (the first frames of a clip, where nothing was seen yet to tell them by). Both looks count:
        the one as learnt sees those who stay put long enough to be learnt by the time the frame is drawn. Of a red
        team's (frame, person) pairs shown with `touching`, a walker smeared in a pan: 23 as learnt alone, 17 drawn
        alone, 7 both; small walkers at crf 40 with a shake, 20, 26 and 19."""
        motion = self.cfg.mask.motion
        if not (motion == "all" or (motion == "touching" and len(learnt.hidden))):
            return learnt
        moving = self.background.moving(frame, learnt.view)
        if moving is None:
            return learnt
        hidden = np.zeros(frame.shape[:2], np.uint8)
        for region in learnt.regions:
            hidden[region.slices][region.alpha == 255] = 255
        grown, moved = grow_into_motion(hidden, moving, MOTION_CELL_PX, learnt.hidden, self.cfg.mask)
        if grown is hidden:
            return learnt
        return replace(learnt, regions=soft_regions(grown, self.cfg.mask), moved=np.concatenate([learnt.moved, moved]))

    def _zones(self, shape: tuple[int, int]) -> np.ndarray | None:
        if self.privacy_zones and (self._zones_mask is None or self._zones_mask.shape != shape):
            self._zones_mask = zones_mask(self.privacy_zones, shape)
        return self._zones_mask

    def _draw_pose(self, roi: np.ndarray, region: Region, keypoints: np.ndarray, frame_shape) -> None:
        # Skeletons stay on the anonymized area: a stray keypoint must not paint over the open scene.
        layer = roi.copy()
        shifted = keypoints.copy()
        shifted[:, :, 0] -= region.x0
        shifted[:, :, 1] -= region.y0
        draw_skeletons(layer, shifted, self.cfg.pose.keypoint_conf, self.cfg.pose.thickness, frame_shape)
        cv2.copyTo(layer, region.alpha, roi)


def letterbox(frame: np.ndarray) -> tuple[int, int, int, int]:
    """How many rows at the top and bottom, and columns at the left and right, are letterbox bars: dark and
    flat, from the frame's edge inwards. A moving picture inside fixed bars moves them on the background's
    canvas with it, so drawn back from there under a person the bars showed the scene, their edge a dark
    line; they are kept as the frame has them (`keep_bars`)."""
    h = frame.shape[0]
    top = _flat_run(frame)
    if top == h:
        return h, 0, 0, 0  # a black frame: all bar
    bottom = _flat_run(frame[top:][::-1])
    middle = frame[top : h - bottom].swapaxes(0, 1)  # columns as lines
    left = _flat_run(middle)
    right = _flat_run(middle[left:][::-1])
    return top, bottom, left, right


def _flat_run(lines: np.ndarray, chunk: int = 16) -> int:
    """How many of `lines` (the first axis), from the first, are dark and flat together: every pixel of them
    within BAR_SPREAD levels of every other (line by line alone, a dark leg's columns would each be flat);
    looked at `chunk` at a time, after the first line's brightest (most frames have no bar)."""
    if not len(lines) or lines[0].max() > BAR_LEVEL:
        return 0
    brightest, darkest = 0, 255
    for start in range(0, len(lines), chunk):
        block = lines[start : start + chunk].reshape(min(chunk, len(lines) - start), -1)
        highs = np.maximum.accumulate(np.maximum(block.max(axis=1).astype(int), brightest))
        lows = np.minimum.accumulate(np.minimum(block.min(axis=1).astype(int), darkest))
        bad = np.flatnonzero((highs > BAR_LEVEL) | (highs - lows > BAR_SPREAD))
        if len(bad):
            return start + int(bad[0])
        brightest, darkest = int(highs[-1]), int(lows[-1])
    return len(lines)


def keep_bars(roi: np.ndarray, filmed: np.ndarray, region: Region, bars: tuple[int, int, int, int] | None,
              frame_shape: tuple[int, ...]) -> None:
    """The letterbox `bars` (`letterbox`) within `region` back as filmed: `roi` its pixels out, `filmed` the
    frame's."""
    if not bars or not any(bars):
        return
    top, bottom, left, right = bars
    h, w = frame_shape[:2]
    for start, stop, axis in ((0, top, 0), (h - bottom, h, 0), (0, left, 1), (w - right, w, 1)):
        low, high = (region.y0, region.y1) if axis == 0 else (region.x0, region.x1)
        a, b = max(start, low) - low, min(stop, high) - low
        if b > a:
            part = (slice(a, b), slice(None)) if axis == 0 else (slice(None), slice(a, b))
            roi[part] = filmed[part]


def background_model(cfg, keep_frames: int) -> BackgroundModel:
    """The camera's background model, its pixels where `background.device` says (PyTorch only for a GPU)."""
    if cfg.device == "cpu":
        return BackgroundModel(cfg, keep_frames=keep_frames)
    from anonengine.background_torch import TorchBackgroundModel

    return TorchBackgroundModel(cfg, keep_frames=keep_frames, device=cfg.device)


def draw_skeletons(
    out: np.ndarray, keypoints: np.ndarray, min_conf: float, thickness: float, frame_shape: tuple[int, int]
) -> None:
    """COCO-17 limbs and joints of every person, keypoints below `min_conf` left out; sizes follow the frame,
    and the person where that is smaller: a small person in a large picture (a crowd in a 48-MP photo) was
    drawn with joints as large as their head, a yellow blot for a body."""
    diag = frame_diagonal(frame_shape)
    for kps in keypoints:
        visible = kps[:, 2] >= min_conf
        pts = np.round(kps[:, :2]).astype(np.int32)
        extent = np.ptp(kps[visible, :2], axis=0).max() if visible.sum() > 1 else 0.0
        width = min(thickness * diag, PERSON_LINE * extent)
        line, radius = max(1, round(width)), max(2, round(1.4 * width))
        for a, b in COCO_SKELETON:
            if visible[a] and visible[b]:
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), LIMB_COLOR, line, cv2.LINE_AA)
        for i in np.flatnonzero(visible):
            cv2.circle(out, tuple(map(int, pts[i])), radius, JOINT_COLOR, -1, cv2.LINE_AA)


def _moved_on(held: Detections, held_of: np.ndarray, reported: Detections) -> Detections:
    """Held skeletons of persons the last detection found (too weakly for a skeleton of their own) placed in their
    box as reported now: between two detections, moved on (`in_between`) as the others are, not left behind."""
    if not (held_of >= 0).any():
        return held
    boxes, keypoints = held.boxes.copy(), held.keypoints.copy()
    for i in np.flatnonzero(held_of >= 0):
        now = reported.boxes[held_of[i]]
        keypoints[i, :, :2] += (now[:2] + now[2:] - boxes[i, :2] - boxes[i, 2:]) / 2
        boxes[i] = now
    return replace(held, boxes=boxes, keypoints=keypoints)


def one_skeleton_a_person(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, min_conf: float
                          ) -> np.ndarray:
    """Which of the skeletons of one detection to draw (indices, in order): of two on one person, the more
    confident (SAME_SKELETON_SPREAD), whose joints agree with the other's where both see them; the model is surer
    of it, though its box may see fewer (cut short at the hips, no legs)."""
    if len(boxes) < 2:
        return np.arange(len(boxes))
    overlaps, heights = overlap_of_smaller(boxes, boxes), boxes[:, 3] - boxes[:, 1]
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not any(overlaps[i, j] >= SAME_SKELETON_OVERLAP and _same_joints(keypoints[i], keypoints[j], min_conf,
                                                                               min(heights[i], heights[j]))
                   for j in kept):
            kept.append(int(i))
    return np.sort(np.asarray(kept, np.int64))


def _same_joints(a: np.ndarray, b: np.ndarray, min_conf: float, height: float) -> bool:
    shared = (a[:, 2] >= min_conf) & (b[:, 2] >= min_conf)
    if shared.sum() < MIN_SHARED_JOINTS:
        return False
    apart = np.hypot(*(a[shared, :2] - b[shared, :2]).T)
    return float(np.median(apart)) <= SAME_SKELETON_SPREAD * height


def in_between(before: Detections, upcoming: tuple[int, Detections] | None, since: int) -> Detections:
    """The persons of `before` (`since` frames ago) as they are now: moved linearly towards the same
    person in the next detection (`upcoming`: frames ahead, detections) where there is one, as they
    were otherwise."""
    boxes, scores, keypoints = before.boxes.copy(), before.scores.copy(), before.keypoints.copy()
    if upcoming is not None and len(before) and len(upcoming[1]):
        ahead, after = upcoming
        t = since / (since + ahead)
        for i in range(len(before)):
            # Told as the look-ahead follows a person (a walker 19 px a frame, 3 frames on, overlapped their next
            # box by 0.30, under SAME_PERSON_IOU: held where last seen for 2 frames of every 3, their skeleton
            # stuttered); each the other's, or someone else is the same person in the next detection.
            j = same_person(before.boxes[i], after.boxes, since + ahead, SAME_PERSON_IOU, FOLLOW_GAP_FRAMES)
            if j is None or same_person(after.boxes[j], before.boxes, since + ahead, SAME_PERSON_IOU,
                                        FOLLOW_GAP_FRAMES) != i:
                continue
            boxes[i] = (1 - t) * before.boxes[i] + t * after.boxes[j]
            keypoints[i, :, :2] = (1 - t) * before.keypoints[i, :, :2] + t * after.keypoints[j, :, :2]
            keypoints[i, :, 2] = np.minimum(before.keypoints[i, :, 2], after.keypoints[j, :, 2])
            scores[i] = min(before.scores[i], after.scores[j])
    return Detections(before.frame_shape, boxes, scores, keypoints)


def obscured_frame(shape: tuple[int, ...]) -> np.ndarray:
    """What is emitted for a frame that cannot be anonymized: nothing of it at all."""
    return np.full(shape, OBSCURED_GREY, np.uint8)


__all__ = ["Compositor", "Learnt", "blend_into", "draw_skeletons", "obscured_frame"]
