"""Mask hold: a person the detector loses for a few frames stays hidden where the tracker predicts them.

Per-frame anonymizers let a face "slip into 1 or 2 frames" whenever the detector misses. Here each
camera's persons are tracked with ByteTrack; while a track is lost (up to `hold_frames`), its
Kalman-predicted box is added to the frame's persons as a box-only person, grown by `grow_per_frame`
of its size for every frame it has been lost, since the prediction gets less sure.
A person still tracked is also hidden at their previous box, so that a box shrinking suddenly (the
one behind, where two overlap) never uncovers them.
It is hidden like any detection (for `bbox` and `seg` alike), and keeps the skeleton it last had, moved with
it (`held_skeletons`).
A person standing still whom the detector loses for longer (turned away, half hidden, blending into what is
behind them) stays hidden while their place still looks as it did at their last detection (`Look`), for up
to `still_frames` frames: before, such a person was dropped after `hold_frames`, learnt into the background
and shown.

ByteTrack is written out here, on NumPy and `lap` (the assignment solver of ByteTrack's reference code
and of Ultralytics' tracker): Roboflow's `trackers`, used before, imports `supervision` and SciPy, 0.8 s
of CPU at every compositor's start (a 200-frame 720p run on two cores: 0.75 s of its 9 s wall), and
counts its lost-track budget in seconds at 30 frames/s where the hold counts frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import lap
import numpy as np

from anonengine.config import HoldConfig
from anonengine.detections import NUM_KEYPOINTS, Detections, box_iou
from anonengine.messages import HoldState, KeptTrack

LOOKAHEAD_MIN_IOU = 0.2
EDGE_PX = 2  # a box this close to the frame's edge meets it (a person partly out of the picture)
FAST_FOLLOW_FRAMES = 2  # a fast person is followed from one sighting to one at most this many frames on
FAST_FOLLOW_WIDTHS = 2.0  # and moved by at most this many of their widths a frame
# A path is followed through sightings at most this many frames apart (the detector's stride): 15 frames after
# a person crossing fast left, another coming back overlapped their last box, and was taken for them.
FOLLOW_GAP_FRAMES = 3
TRACK_MIN_IOU = 0.2  # what ByteTrack matches on (its match_thresh 0.8 is a cost, 1 - IoU)
# ByteTrack's second association, a strong track to a low detection, asks more (its reference code and Ultralytics':
# a cost of at most 0.5). At 0.2, the track of a person standing in front of a walker took a weak box the detector drew
# on the walker's chest, a third of their height: its filter flew up off them after it, the picture that finds a
# standing person became the walker's, and their legs were shown once the walker had passed (the street clip).
LOW_MATCH_MIN_IOU = 0.5
MIN_HITS = 2  # matches that confirm a track: a lone false detection is never held for long
# A track not confirmed yet lives this many frames past its last match (and is hidden meanwhile, as a lost one):
# a detection missed in between (two detections apart at the default stride) no longer ends it. Dropped at its
# first miss, a person the detector found every other time (a standing figure scored 0.17 to 0.5, the street
# clip after a live camera's loop cut back: found at 7 of 11 detections, never twice running) was never
# confirmed, never held, and shown whole in the 4 frames after their last find (an overload trial).
YOUNG_LOST_FRAMES = 6
# ByteTrack's Kalman tuning (the reference code's and Roboflow's): each corner's acceleration is white noise
# of this variance per frame (a gap of several frames scales it as a constant-velocity model does), the
# detector's corners are this uncertain, and a new track's corners and speeds start at variance 1.
ACCELERATION_NOISE = 0.01
MEASUREMENT_NOISE = 0.1
# A lost person is still there where their last detection's picture is found again, grey and scaled to this many
# pixels along its longer side, with a normalized cross-correlation of at least STILL_MATCH. Measured on the
# street bench clip's standing person: 0.83 to 1.0 while there (the detector scoring them under 0.15 for 40
# frames), 0.16 to 0.78 where the background was drawn in their place.
LOOK_SIDE = 64
STILL_MATCH = 0.8
# A held person's last confident skeleton is drawn, moved with them, while it can be believed: for `hold_frames`
# after it was found, or for as long as they stay where it was found (their box's middle within this share of its
# size of where it was, its height within this share of what it was): someone standing keeps their posture.
POSE_STILL_SHARE = 0.25
# A lost person's skeleton is drawn where the hold predicts them for this many frames: the filter's guess drifts (a
# box predicted rising off a person took their skeleton up with it, its first frame lost on the street clip)
PREDICTED_POSE_FRAMES = 5
MIN_POSE_KEYPOINTS = 3  # a skeleton kept has at least this many keypoints the pose model placed
# A person's box that shrank to under SHRUNK of the largest it had within FULL_WINDOW frames (the one behind, where
# two overlap: the detector's box loses the hidden side, then the person) is also hidden at that largest box, moved
# as the edge of each axis that moved least (the side no one covered). Before, the box of a person standing behind
# someone walking past shrank from the walker's side and was lost; the hold predicted it on the way it shrank, and as
# the walker went on, the strip uncovered (a shoe, up to 18% of the person) was shown and learnt into the background,
# whose fill then showed it for the rest of the clip (a user's trial, `still_plain`: 120 of 150 frames).
FULL_WINDOW = 25
SHRUNK = 0.85
# While someone else's box overlaps a person's (within OVERLAP_REACH of their width), the boxes they had before are kept
# back to FULL_WINDOW frames before it began (for at most OCCLUDED_FRAMES), those of about their height now
# (OCCLUDED_HEIGHT_SHARE) counted as their fullest: a walker crossing in front of someone standing took 100 frames,
# their box narrowed from the walker's side all the while, and 25 frames on its fullest was as narrow (the street clip
# at 720p: more than 1% of the one standing behind shown beside the walker in 95 of its 200 frames, up to 19%).
OVERLAP_REACH = 0.05
OCCLUDED_HEIGHT_SHARE = 0.2
OCCLUDED_FRAMES = 150
# Where someone's box covers an edge of a person's (the one in front), their box that shrank to under OCCLUDED_SHRUNK
# of its fullest is held at its fullest, moved as the edge no one covers, and over all its boxes of about that height
# within FULL_WINDOW (`Track.extent`): behind a walker, the detector's box of a person shrank from both sides (the
# walker's, and the far one, their hand reaching out past the walker lost), to 0.86 of its fullest (over SHRUNK), and
# where it was held, moved as its least moved edge, the shrinking one, it went the wrong way. A red team's street
# clips (640x360 to 1080p, 96 to 200 frames; a hand, a badge, a sleeve shown): 7, 7, 7, 4, 6 and 23 frames showing
# more than 1% of the one behind; 0 now. At 0.97, `bench/privacy.py`'s background error rose by up to 1.7 grey levels
# where persons cross in a pan; at 0.9, by 0.07 on average.
OCCLUDED_SHRUNK = 0.9


@dataclass(eq=False)
class Track:
    """One person's box (x0, y0, x1, y1), followed by a constant-velocity Kalman filter.

    The four corners move independently under the same noise, so they share one 2x2 covariance (place,
    speed): the 8-dimensional filter at the cost of a 2-dimensional one. Compared by identity: a track
    is a key while it lives."""

    state: np.ndarray  # (2, 4): the corners' places, then their speeds in pixels a frame
    matched_at: int  # the frame of its last match
    matched_box: np.ndarray  # its box as filtered at that match
    covariance: np.ndarray = field(default_factory=lambda: np.eye(2))
    hits: int = 1  # updates that matched it, the one that started it included
    weak: bool = False  # started by a detection under the tracker's `high_score`: matched to such ones only
    confirmed: bool = False
    seen_at: int = -1  # the last frame it was found by its looks, the detector having lost it (`MaskHold`)
    # (frame, box as detected) of its matches within FULL_WINDOW frames of the last, or of `clear_at`: its size before
    # it shrank
    recent: list[tuple[int, np.ndarray]] = field(default_factory=list)
    clear_at: int = -1  # the last frame it was matched with no one else's box overlapping its own (`OVERLAP_REACH`)
    # Its last confident skeleton (`MaskHold`'s `posed_from`): keypoints (17, 3), the box they were found in, and
    # the frame
    pose: np.ndarray | None = None
    pose_box: np.ndarray | None = None
    pose_at: int = -1

    @classmethod
    def start(cls, box: np.ndarray, frame: int, weak: bool = False) -> Track:
        box = np.asarray(box, np.float64)
        return cls(np.stack([box, np.zeros(4)]), frame, box.copy(), weak=weak, recent=[(frame, box.copy())],
                   clear_at=frame)

    def fullest(self) -> np.ndarray | None:
        """The largest of its recent boxes as detected (`recent`): of those within FULL_WINDOW frames of the last, and
        of those kept from before while someone overlapped it, of about its height now."""
        if not self.recent:
            return None
        last, now = self.recent[-1]
        height = now[3] - now[1]
        return max((box for frame, box in self.recent if last - frame <= FULL_WINDOW
                    or abs(box[3] - box[1] - height) <= OCCLUDED_HEIGHT_SHARE * height), key=_area)

    def extent(self) -> np.ndarray:
        """What its boxes of about its height now (OCCLUDED_HEIGHT_SHARE) within FULL_WINDOW frames of the last took
        in, together."""
        last, now = self.recent[-1]
        height = now[3] - now[1]
        boxes = np.array([box for frame, box in self.recent if last - frame <= FULL_WINDOW
                          and abs(box[3] - box[1] - height) <= OCCLUDED_HEIGHT_SHARE * height])
        return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])

    @property
    def box(self) -> np.ndarray:
        """Where it is (matched) or is predicted (lost), as of the tracker's last update."""
        return self.state[0]

    def predict(self, frames: int) -> None:
        transition = np.array([[1.0, frames], [0.0, 1.0]])
        self.state = transition @ self.state
        noise = ACCELERATION_NOISE * np.array([[frames**4 / 4, frames**3 / 2], [frames**3 / 2, frames**2]])
        self.covariance = transition @ self.covariance @ transition.T + noise

    def correct(self, box: np.ndarray, frame: int, overlapped: bool = False) -> None:
        """`overlapped`: someone else's box overlaps `box` (`clear_at`)."""
        gain = self.covariance[:, 0] / (self.covariance[0, 0] + MEASUREMENT_NOISE)
        self.state = self.state + np.outer(gain, box - self.state[0])
        self.covariance = self.covariance - np.outer(gain, self.covariance[0])
        self.matched_at, self.matched_box = frame, self.state[0].copy()
        if not overlapped:
            self.clear_at = frame
        kept_from = max(min(frame, self.clear_at) - FULL_WINDOW, frame - OCCLUDED_FRAMES)
        self.recent = [(f, b) for f, b in self.recent if f >= kept_from]
        self.recent.append((frame, np.array(box, np.float64)))
        self.hits += 1
        self.confirmed = self.confirmed or self.hits >= MIN_HITS


class ByteTrack:
    """ByteTrack (Zhang et al., ECCV 2022): detections scoring at least `high_score` are matched to every
    track first, the lower ones then to the tracks left (a person half hidden scores low, and stays
    followed); an unmatched high detection starts a track, confirmed at its `MIN_HITS`-th match; a confirmed
    track lost for more than `max_lost_frames` frames (by the detector and by its looks, see `MaskHold`) is
    dropped, an unconfirmed one after YOUNG_LOST_FRAMES.

    Updates may skip frames (a detection stride): `update` is told the frame's number, and the filter
    predicts over the gap."""

    def __init__(self, high_score: float, min_iou: float, max_lost_frames: int, start_score: float | None = None
                 ) -> None:
        """`start_score`: a detection left unmatched starts a track from this score (default `high_score`);
        one under `high_score` starts a `weak` one."""
        self.high_score, self.min_iou, self.max_lost_frames = high_score, min_iou, max_lost_frames
        self.start_score = high_score if start_score is None else min(start_score, high_score)
        self.tracks: list[Track] = []
        self.frame: int | None = None  # of the last update
        self.last_boxes = np.zeros((0, 4))  # the last update's

    def update(self, boxes: np.ndarray, scores: np.ndarray, frame: int) -> None:
        """`boxes` (N, 4) xyxy and their `scores`, found in frame number `frame` (later than the last)."""
        gap = 1 if self.frame is None else frame - self.frame
        for track in self.tracks:
            track.predict(gap)
        self.frame = frame
        self.tracks = [t for t in self.tracks if frame - max(t.matched_at, t.seen_at)
                       <= (self.max_lost_frames if t.confirmed else YOUNG_LOST_FRAMES)]
        boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
        self.last_boxes = boxes
        high = scores >= self.high_score
        # Weak tracks are matched to weak detections only: matched to a strong one they took it from the strong
        # track of the person beside them, which then was held and grown where it was.
        left, taken = self._match([t for t in self.tracks if not t.weak], boxes[high], frame)
        # A track matched once has no speed yet: someone crossing a low-rate stream (3 frames/s, or a live camera
        # thinned by an overloaded machine) moved most of their width since, and overlaps it too little (55 px a
        # frame, 58 px wide: 0.02). Each detection of them started a track, none confirmed, none held: the frame
        # after they stepped out at an edge showed the strip of them still in it. Such a track is also matched
        # as someone moving fast (`same_person`) to the strong detections left.
        young = [t for t in left if not t.confirmed]
        if young and not taken.all():
            untaken = np.flatnonzero(~taken)
            still_young, taken_fast = self._match(young, boxes[high][untaken], frame, fast=True)
            taken[untaken[taken_fast]] = True
            left = [t for t in left if t.confirmed or t in still_young]
        low = np.flatnonzero(~high)
        _, taken_low = self._match(left, boxes[low], frame, min_iou=max(self.min_iou, LOW_MATCH_MIN_IOU))
        _, taken_weak = self._match([t for t in self.tracks if t.weak], boxes[low[~taken_low]], frame)
        taken_low[np.flatnonzero(~taken_low)[taken_weak]] = True
        self.tracks += [Track.start(box, frame) for box in boxes[high][~taken]]
        weak_starts = ~taken_low & (scores[~high] >= self.start_score)
        self.tracks += [Track.start(box, frame, weak=True) for box in boxes[~high][weak_starts]]

    def _match(self, tracks: list[Track], boxes: np.ndarray, frame: int, fast: bool = False,
               min_iou: float | None = None) -> tuple[list[Track], np.ndarray]:
        """Matches `boxes` to `tracks` (the most overlap in all, each pair at least `min_iou`, default the tracker's;
        `fast`: the least `fast_follow_cost`) and corrects the matched tracks: the tracks left, and which boxes were
        taken."""
        taken = np.zeros(len(boxes), bool)
        if not tracks or not len(boxes):
            return tracks, taken
        if fast:
            cost = np.stack([fast_follow_cost(t.box, boxes, frame - t.matched_at) for t in tracks])
            cost = np.where(np.isfinite(cost), cost, 2.0)
            _, box_of_track, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1.0)
        else:
            cost = 1 - box_iou(np.array([t.box for t in tracks]), boxes)
            _, box_of_track, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1 - (self.min_iou if min_iou is None else min_iou))
        left = []
        for track, b in zip(tracks, box_of_track):
            if b < 0:
                left.append(track)
                continue
            step = boxes[b] - track.matched_box, frame - track.matched_at
            track.correct(boxes[b], frame, overlapped=overlaps_another(boxes[b], self.last_boxes))
            if fast:
                # Its speed is the step between its two boxes: corrected from none, the filter's was half of it
                # (55 px a frame taken for 26), and where the person was missed next their held box lagged them.
                track.state[1] = step[0] / max(step[1], 1)
            taken[b] = True
        return left, taken

    def reset(self) -> None:
        self.tracks = []
        self.frame = None


@dataclass(frozen=True)
class Look:
    """A person as the detector last found them: their box's picture, grey and scaled, to tell whether
    someone it then misses is still standing there."""

    picture: np.ndarray  # uint8, at most LOOK_SIDE along its longer side
    size: np.ndarray  # the box's width and height in the frame
    detected_at: int  # the frame

    @classmethod
    def of(cls, image: np.ndarray, box: np.ndarray, frame: int) -> Look | None:
        h, w = image.shape[:2]
        if not np.isfinite(box).all():
            return None
        box = np.clip(box, 0, [w, h, w, h]).astype(np.float64)
        size = box[2:] - box[:2]
        if min(size) < 4:
            return None
        scale = min(1.0, LOOK_SIDE / max(size))
        picture, _ = _grey_crop(image, box, 0, 0, (scale, scale))
        return cls(picture, size, frame) if picture is not None and min(picture.shape) >= 4 else None

    def find(self, image: np.ndarray, near: np.ndarray) -> np.ndarray | None:
        """The box where this picture is in `image`, searched around the box `near` (by a quarter of its
        width and a tenth of its height, 8 pixels more: a still person's place moves by the camera's motion and
        the detector's jitter); None where it is not found."""
        if not np.isfinite(near).all():
            return None
        w, h = self.size
        scale = self.picture.shape[1] / w, self.picture.shape[0] / h
        center = (near[:2] + near[2:]) / 2
        box = np.concatenate([center - self.size / 2, center + self.size / 2])
        region, origin = _grey_crop(image, box, 0.25 * w + 8, 0.1 * h + 8, scale)
        if region is None or region.shape[0] < self.picture.shape[0] or region.shape[1] < self.picture.shape[1]:
            return None  # pushed against the frame's edge: the picture no longer fits
        scores = cv2.matchTemplate(region, self.picture, cv2.TM_CCOEFF_NORMED)
        _, best, _, (x, y) = cv2.minMaxLoc(scores)
        if not best >= STILL_MATCH:  # NaN (a flat picture) is no match either
            return None
        # Found to one scaled pixel (12 px of a 750-px-tall person): the box is grown by that much.
        step = np.array([1 / scale[0], 1 / scale[1]])
        corner = origin + np.array([x, y]) * step
        return np.concatenate([corner - step, corner + self.size + step])


def _grey_crop(image: np.ndarray, box: np.ndarray, margin_x: float, margin_y: float, scale: tuple[float, float]):
    """The picture of `box` grown by the margins and clipped to the image, scaled by `scale` (x, y), grey; and
    its top-left corner in the image. (None, None) where less than 4 pixels a side are left. Scaled before it
    is made grey: 20 persons on a 4K frame took 17 ms a detected frame the other way round."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(box[0] - margin_x)), max(0, int(box[1] - margin_y))
    x1, y1 = min(w, int(np.ceil(box[2] + margin_x))), min(h, int(np.ceil(box[3] + margin_y)))
    size = round((x1 - x0) * scale[0]), round((y1 - y0) * scale[1])
    if x1 - x0 < 4 or y1 - y0 < 4 or min(size) < 1:
        return None, None
    crop = image[y0:y1, x0:x1]
    if size != (x1 - x0, y1 - y0):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    return (cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop), np.array([x0, y0], np.float64)


class MaskHold:
    def __init__(self, cfg: HoldConfig, hidden_from: float | None = None, posed_from: float | None = None) -> None:
        """`posed_from`: the score from which a detection's skeleton is drawn (`pose.person_conf`; None: no skeletons
        are kept). `hidden_from`: the score from which a person is hidden (`detector.person_conf`), which starts a
        track too where it is under `track_thresh`: a person hidden but scored 0.15 to 0.25 (small, half seen)
        was never held, and the first detection that missed them showed them. Such a weak track is held
        where the filter predicts it, not grown: a weak detection's box jitters, and grown from it the held
        boxes of a small person in a fast pan hid so much that the street's background error went from 0.5
        to 17 grey levels (`bench/privacy.py`); not grown, 0.5."""
        self.cfg = cfg
        self.posed_from = posed_from
        # Ages count frames, not detections: with a stride the tracker hears of every 2nd or 3rd frame, and
        # a lost person held for `hold_frames` detections would stay hidden two or three times as long, over
        # a background never learnt again. So the tracker is told each detection's frame number.
        self.tracker = ByteTrack(high_score=cfg.track_thresh, min_iou=TRACK_MIN_IOU, max_lost_frames=cfg.hold_frames,
                                 start_score=hidden_from)
        self.frame = -1  # frames this hold has seen
        self.coasted = 0  # frames since the last detection (detector.stride)
        self.looks: dict[Track, Look] = {}
        # Lost tracks found by their looks: where, as of their `seen_at`. Kept past a detection that does not
        # find them (a person passing in front), hidden there, grown, for `hold_frames`, and looked for there
        # next: the filter, which looks never move, drifts at the speed it had when they stopped.
        self.standing: dict[Track, np.ndarray] = {}

    def update(self, detections: Detections, image: np.ndarray | None = None) -> Detections:
        """`detections` plus the predicted boxes of persons lost within the hold window, and the boxes of
        lost persons found standing where they were (`image`, the frame detected, tells; see `Look`).

        A frame the detector did not look at (`detected` False) leaves the tracker as it is: every
        track, new ones too, is hidden at its last box, grown for the frames since it was seen, and
        every person found standing at the last detection where they were found.
        """
        self.frame += 1
        if not detections.detected:
            self.coasted += 1
            return with_extra_boxes(detections, np.concatenate([self.coasting_boxes(detections.frame_shape),
                                                                self._standing_boxes(detections.frame_shape),
                                                                self._full_boxes(detections.frame_shape)]))
        self.coasted = 0

        before = {t: t.box.copy() for t in self.tracker.tracks if t.matched_at == self.tracker.frame}
        self.tracker.update(detections.boxes, detections.scores, self.frame)
        self._keep_poses(detections)
        if image is not None and self.cfg.still_frames:
            self._look(image)
        # A person found again is also hidden where they were the frame before: where persons overlap,
        # the detector's box for the one behind can shrink by more than their step (measured: 5 px of
        # a 40-px-wide person, 1% of them shown), and a box never shrinks faster than a person moves.
        followed = [before[t] for t in self.tracker.tracks if t.matched_at == self.frame and t in before]
        held = np.concatenate([self.held_boxes(detections.frame_shape),
                               np.array(followed, np.float32).reshape(-1, 4),
                               self._standing_boxes(detections.frame_shape),
                               self._full_boxes(detections.frame_shape)])
        if not len(held):
            return detections
        return with_extra_boxes(detections, held)

    def _look(self, image: np.ndarray) -> None:
        """Pictures the persons the detector found; finds each confirmed one it lost whose picture is where
        they were (`standing`), for `still_frames` after that detection. Pictures are only ever the
        detector's, so a track cannot drift off its person onto the background by following itself; and
        its filter is left as the detector left it, so that within `hold_frames` a person who did walk off
        is still hidden where the hold predicts them, grown, as before."""
        alive = set(self.tracker.tracks)
        self.standing = {t: place for t, place in self.standing.items() if t in alive}
        for track in self.tracker.tracks:
            if track.matched_at == self.frame:
                look = Look.of(image, track.box, self.frame)
                if look is not None:
                    self.looks[track] = look
                self.standing.pop(track, None)
                continue
            look = self.looks.get(track)
            if not track.confirmed or look is None or self.frame - look.detected_at > self.cfg.still_frames:
                continue
            found = look.find(image, self.standing.get(track, track.box))
            if found is not None:
                track.seen_at = self.frame
                self.standing[track] = found.clip(0, [image.shape[1], image.shape[0]] * 2)
        self.looks = {t: self.looks[t] for t in self.tracker.tracks if t in self.looks}

    def _keep_poses(self, detections: Detections) -> None:
        """Each track matched now by a confident detection with a skeleton keeps that skeleton (a box the pose
        model gave no keypoints, a segmentation model's person, has none to keep)."""
        if self.posed_from is None or not len(detections):
            return
        for track in self.tracker.tracks:
            if track.matched_at != self.frame:
                continue
            found = _index_of(detections.boxes, track.recent[-1][1])
            if found < 0:
                continue
            keypoints = detections.keypoints[found]
            if detections.scores[found] >= self.posed_from and (keypoints[:, 2] > 0).sum() >= MIN_POSE_KEYPOINTS:
                track.pose, track.pose_box = keypoints.copy(), detections.boxes[found].astype(np.float64)
                track.pose_at = self.frame

    def held_skeletons(self, shape: tuple[int, int], found: np.ndarray, posed: np.ndarray
                       ) -> tuple[Detections, np.ndarray]:
        """The persons hidden now without a confident skeleton of their own, with the last confident one their track
        had, moved with the middle of their box: a skeleton blinked out whenever the detector scored someone low
        or missed them for a frame or two (on the street clip, 221 of its 1,000 person-frames had none).
        Only where it can be believed: where the last detection found them (too weak for a skeleton of its own) or
        their look found them standing then, or, lost, where the hold predicts them for PREDICTED_POSE_FRAMES;
        at about the height it was found at (POSE_STILL_SHARE: a track whose box jumped onto a larger person
        walking past drew a small skeleton across them); and found within `hold_frames`, unless they stayed
        where it was found (someone standing keeps their posture). Confirmed tracks only: a box the detector drew
        once on part of someone (their legs) drew a second, small skeleton on them.

        `found`: the boxes of the last detection, as found; `posed`: which of them get a skeleton of their own now
        (from this frame's detection, or moved on from the last one between two: `in_between`, whose score is the
        lower of the two detections'). Returns the skeletons (score 0: not found now), and for each the index in
        `found` of their person where the last detection found them (-1: it did not)."""
        boxes, keypoints, of_found = [], [], []
        for track in self.tracker.tracks if self.posed_from is not None else ():
            if track.pose is None or not track.confirmed:
                continue
            index = -1
            if track.matched_at == self.tracker.frame:
                index = _index_of(found, track.recent[-1][1])
                if index >= 0 and posed[index]:
                    continue  # drawn from the detection itself
            if track in self.standing and track.seen_at == self.tracker.frame:
                box = np.asarray(self.standing[track], np.float64)
            elif index >= 0:
                box = track.recent[-1][1]
            elif self.frame - track.matched_at <= PREDICTED_POSE_FRAMES:
                box = self._held_box(track)
            else:
                continue
            if not _about_as_tall(track.pose_box, box) or (
                    self.frame - track.pose_at > self.cfg.hold_frames and not _stayed(track.pose_box, box)):
                continue
            moved = track.pose.copy()
            moved[:, :2] += (box[:2] + box[2:] - track.pose_box[:2] - track.pose_box[2:]) / 2
            boxes.append(box)
            keypoints.append(moved)
            of_found.append(index)
        skeletons = Detections(shape, np.float32(boxes).reshape(-1, 4), np.zeros(len(boxes), np.float32),
                               np.float32(keypoints).reshape(-1, NUM_KEYPOINTS, 3), detected=False)
        return skeletons, np.array(of_found, np.int64)

    def _standing_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        """Where lost persons were last found by their looks, grown for each frame since, as a lost track's."""
        return self._grown([(box, self.frame - t.seen_at) for t, box in self.standing.items()
                            if self.frame - t.seen_at <= self.cfg.hold_frames], shape)

    def _full_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        """The tracks within the hold whose box shrank (`SHRUNK`; OCCLUDED_SHRUNK where someone's box covers one of
        its edges) at their fullest recent box, moved as the edge of each axis that no one covers, or else that moved
        least since (and, covered, over their `extent`), grown for the frames since they were matched. Weak ones are
        not: their boxes jitter."""
        boxes = []
        found = self.tracker.last_boxes
        for track in self.tracker.tracks:
            age = self.frame - track.matched_at
            fullest = track.fullest()
            if track.weak or age > self.cfg.hold_frames or fullest is None:
                continue
            now = self._held_box(track) if age else track.recent[-1][1]
            own = _index_of(found, track.recent[-1][1]) if age == 0 else -1
            covered = covered_edges(now, np.delete(found, own, axis=0) if own >= 0 else found)
            if _area(now) >= (OCCLUDED_SHRUNK if covered.any() else SHRUNK) * _area(fullest):
                continue
            moved = now - fullest
            shift = []
            for a in (0, 1):
                if covered[a] != covered[a + 2]:  # the side no one covers moved with the person
                    shift.append(moved[a + 2] if covered[a] else moved[a])
                else:
                    shift.append(moved[a] if abs(moved[a]) <= abs(moved[a + 2]) else moved[a + 2])
            boxes.append((fullest + np.array(shift * 2), age))
            if covered.any():  # and over the places its box took lately: where it shrank from either side
                boxes.append((track.extent(), age))
        return self._grown(boxes, shape)

    def pass_frame(self) -> None:
        """A frame not learnt (it went out obscured): the tracker's clock goes on all the same."""
        self.frame += 1
        self.coasted += 1

    def held_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        """Lost tracks (confirmed ones for `hold_frames`, others for YOUNG_LOST_FRAMES) at their predicted boxes."""
        return self._track_boxes(shape, youngest=1)

    def coasting_boxes(self, shape: tuple[int, int]) -> np.ndarray:
        return self._track_boxes(shape, youngest=0)

    def _track_boxes(self, shape: tuple[int, int], youngest: int) -> np.ndarray:
        """Every track at least `youngest` frames since its last match, within the hold, at its predicted box
        grown for those frames (a weak one not grown)."""
        aged = [(t, self.frame - t.matched_at) for t in self.tracker.tracks]
        return self._grown([(self._held_box(t), 0 if t.weak else age) for t, age in aged
                            if youngest <= age <= self.cfg.hold_frames], shape)

    @staticmethod
    def _held_box(track: Track) -> np.ndarray:
        """Where a track is predicted (its place when last matched would be stale by the camera's motion
        since: a fast pan smeared it over the background), at least the size it had then: the filter
        extrapolates a box's size as well as its place, and a detector's boxes of a small person vary in
        height by a quarter from frame to frame (predicted two frames on, a stride, one shrank off a
        person's feet)."""
        predicted, seen = track.box, track.matched_box
        center = (predicted[:2] + predicted[2:]) / 2
        half = np.maximum(predicted[2:] - predicted[:2], seen[2:] - seen[:2]) / 2
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
        self.looks, self.standing = {}, {}
        self.coasted = 0

    def kept(self, camera: str, stream: str, seq: int) -> HoldState:
        """This hold as of frame `seq`, for a successor to take over (`take_over`)."""
        tracks = []
        for track in self.tracker.tracks:
            look, standing = self.looks.get(track), self.standing.get(track)
            tracks.append(KeptTrack(
                tuple(map(float, track.state.ravel())), tuple(map(float, track.covariance.ravel())), track.matched_at,
                tuple(map(float, track.matched_box)), track.hits, track.weak, track.confirmed, track.seen_at,
                look=None if look is None else look.picture.tobytes(),
                look_shape=(0, 0) if look is None else look.picture.shape,
                look_size=(0.0, 0.0) if look is None else tuple(map(float, look.size)),
                look_at=0 if look is None else look.detected_at,
                standing=None if standing is None else tuple(map(float, standing)),
                recent=tuple((f, *map(float, b)) for f, b in track.recent),
                pose=None if track.pose is None else tuple(map(float, track.pose.ravel())),
                pose_box=() if track.pose_box is None else tuple(map(float, track.pose_box)),
                pose_at=track.pose_at, clear_at=track.clear_at))
        return HoldState(camera, stream, seq, self.frame, self.tracker.frame, self.coasted, tuple(tracks))

    def take_over(self, state: HoldState, next_seq: int) -> None:
        """Goes on from a predecessor's hold (`kept`), its next frame `next_seq`: its frames since `state.seq`
        are time gone by for its tracks (frames it learnt after that and did not hand on are learnt again here:
        taken as the next frame)."""
        self.reset()
        for kept in state.tracks:
            track = Track(np.array(kept.state, np.float64).reshape(2, 4), kept.matched_at,
                          np.array(kept.matched_box, np.float64), np.array(kept.covariance, np.float64).reshape(2, 2),
                          kept.hits, kept.weak, kept.confirmed, kept.seen_at,
                          [(int(r[0]), np.array(r[1:], np.float64)) for r in kept.recent],
                          kept.clear_at if kept.clear_at >= 0 else kept.matched_at)
            if kept.pose is not None:
                track.pose = np.array(kept.pose, np.float32).reshape(NUM_KEYPOINTS, 3)
                track.pose_box, track.pose_at = np.array(kept.pose_box, np.float64), kept.pose_at
            self.tracker.tracks.append(track)
            if kept.look is not None:
                picture = np.frombuffer(kept.look, np.uint8).reshape(kept.look_shape).copy()
                self.looks[track] = Look(picture, np.array(kept.look_size, np.float64), kept.look_at)
            if kept.standing is not None:
                self.standing[track] = np.array(kept.standing, np.float32)
        self.tracker.frame, self.coasted = state.tracker_frame, state.coasted
        self.frame = state.frame + max(1, next_seq - state.seq) - 1


def _stayed(was: np.ndarray, now: np.ndarray) -> bool:
    """Whether a box `now` is where `was` was, its middle within POSE_STILL_SHARE of its size."""
    middle_moved = np.abs((now[:2] + now[2:]) - (was[:2] + was[2:])) / 2
    return bool((middle_moved <= POSE_STILL_SHARE * (was[2:] - was[:2])).all())


def _about_as_tall(was: np.ndarray, now: np.ndarray) -> bool:
    """Whether a box `now` is as tall as `was`, to POSE_STILL_SHARE."""
    height = (now[3] - now[1]) / max(was[3] - was[1], 1e-6)
    return 1 - POSE_STILL_SHARE <= height <= 1 / (1 - POSE_STILL_SHARE)


def _index_of(boxes: np.ndarray, box: np.ndarray) -> int:
    """Which of `boxes` is `box` (a track keeps its detection's box: the same to float precision); -1: none."""
    same = np.flatnonzero(np.abs(np.asarray(boxes, np.float64).reshape(-1, 4) - box).max(axis=1, initial=0.0) < 1e-3)
    return int(same[0]) if len(same) else -1


def overlaps_another(box: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether a box of `boxes` other than `box` (one of them) overlaps it, grown by OVERLAP_REACH of its width."""
    reach = OVERLAP_REACH * (box[2] - box[0])
    meets = ((boxes[:, 0] < box[2] + reach) & (boxes[:, 2] > box[0] - reach)
             & (boxes[:, 1] < box[3] + reach) & (boxes[:, 3] > box[1] - reach))
    return int(meets.sum()) > 1


def covered_edges(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Which edges of `box` (x0, y0, x1, y1) one of `others` lies across (to OVERLAP_REACH of its width), overlapping
    it along that edge."""
    reach = OVERLAP_REACH * (box[2] - box[0])
    others = np.asarray(others, np.float64).reshape(-1, 4)
    across_x = (others[:, 1] < box[3]) & (others[:, 3] > box[1])  # beside it, at its height
    across_y = (others[:, 0] < box[2]) & (others[:, 2] > box[0])
    covered = np.zeros(4, bool)
    for edge, (lo, hi, beside) in enumerate(((0, 2, across_x), (1, 3, across_y), (0, 2, across_x), (1, 3, across_y))):
        line = box[edge]
        covered[edge] = bool((beside & (others[:, lo] < line + reach) & (others[:, hi] > line - reach)).any())
    return covered


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def with_extra_boxes(detections: Detections, boxes: np.ndarray) -> Detections:
    """Adds box-only persons with score 0 (hidden, never drawn)."""
    k = len(boxes)
    return detections.with_persons(boxes, np.zeros(k, np.float32), np.zeros((k, NUM_KEYPOINTS, 3), np.float32))


def lookahead_boxes(current: Detections, future: list[tuple[int, Detections]], near: int,
                    sightings: list[tuple[int, int, np.ndarray]] | None = None) -> np.ndarray:
    """Boxes where a person appears in the next frames: found there but not in the frame before.

    `future`: (frames ahead, detections) of the next frames the detector looked at. A person first found
    up to `near` frames on is hidden here where they were found (the frames of a foot or a shoulder entering
    the picture, or of a detector that re-acquires someone late) and where their path, traced back from their
    later sightings, puts them now (`traced_back`): someone crossing fast (80 px a frame at 640x360) first
    found 3 frames on, between detections, was at the edge in the frames before, and showed there, 68% of
    them. Found farther on (a recording's longer look-ahead), only where the traced path puts them: held where
    found, a person entering slowly at an edge had that edge masked for frames before they came, the model
    never learnt what was there, and drew a ghost of them from their first, ill-fitting boxes. A person
    already found moves on with their own boxes; their path ahead is not smeared over this frame.
    `sightings`: `first_sightings(current, future)`, where the caller has it.
    """
    new = []
    for index, ahead, fresh in first_sightings(current, future) if sightings is None else sightings:
        traced = traced_back(fresh, ahead, future[index + 1:], current.frame_shape)
        new += [fresh, traced] if ahead <= near else [traced]
    # A person here partly out of the picture, found further in later: as tall (or wide) as found then. Someone
    # stepping in at 1.5 px a frame was found by their legs first, and their head showed over those frames.
    coming_in = current.boxes[[meets_edge(box, current.frame_shape) for box in current.boxes]]
    if len(coming_in):
        new.append(traced_back(coming_in, 0, future, current.frame_shape))
    return np.concatenate(new).astype(np.float32) if new else np.zeros((0, 4), np.float32)


def meets_edge(box: np.ndarray, frame_shape: tuple[int, int]) -> bool:
    """Whether the box meets an edge of the frame (within EDGE_PX): its person is partly out of the picture."""
    h, w = frame_shape
    return bool(box[0] <= EDGE_PX or box[1] <= EDGE_PX or box[2] >= w - EDGE_PX or box[3] >= h - EDGE_PX)


def newly_found(boxes: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Which of `boxes` (a detection's) were not in the detection `before` (its boxes; None: there was none)."""
    if before is None or not len(before) or not len(boxes):
        return np.ones(len(boxes), bool)
    return box_iou(boxes, before).max(axis=1) < LOOKAHEAD_MIN_IOU


def first_sightings(current: Detections, future: list[tuple[int, Detections]]) -> list[tuple[int, int, np.ndarray]]:
    """(index in `future`, frames ahead, boxes) of the persons found in the next frames the detector looked at
    and not in the one before (`current` for the first): where `lookahead_boxes` hides someone before they
    are found."""
    sightings = []
    before = current.boxes
    for index, (ahead, frame) in enumerate(future):
        fresh = frame.boxes[newly_found(frame.boxes, before)]
        if len(fresh):
            sightings.append((index, ahead, fresh))
        before = frame.boxes
    return sightings


def _same_person(box: np.ndarray, boxes: np.ndarray, frames: int) -> np.ndarray | None:
    """The box of `boxes` that is `box`'s person `frames` frames later (`same_person`), or None."""
    found = same_person(box, boxes, frames)
    return None if found is None else boxes[found]


def same_person(box: np.ndarray, boxes: np.ndarray, frames: int, min_iou: float = LOOKAHEAD_MIN_IOU,
                max_frames: int = FAST_FOLLOW_FRAMES) -> int | None:
    """Which of `boxes` is `box`'s person `frames` frames later: the one overlapping it most, at `min_iou`
    at least; else, for someone moving faster than their width in that time (a 98-px-wide person crossing at
    72 px a frame overlapped their next box by 0.14, and was not followed), the nearest of about their height
    whose middle moved by no more than FAST_FOLLOW_WIDTHS of their width a frame (160 px a frame at 640x360, a
    sprint close by, is 1.6 widths), and half their height, over at most `max_frames` (15 frames on, any box of
    a person's height was near enough: another person's was taken, and the path traced back missed the one it
    was for). None: no one."""
    if not len(boxes):
        return None
    overlap = box_iou(box[None], boxes)[0]
    if overlap.max() >= min_iou:
        return int(overlap.argmax())
    cost = fast_follow_cost(box, boxes, frames, max_frames)
    if not np.isfinite(cost).any():
        return None
    return int(np.argmin(cost))


def fast_follow_cost(box: np.ndarray, boxes: np.ndarray, frames: int, max_frames: int = FAST_FOLLOW_FRAMES
                     ) -> np.ndarray:
    """How far each of `boxes` is from being `box`'s person `frames` frames later, moving fast (`same_person`):
    the distance their middle moved over the most it may (0 to 1), inf where it may not be them (all of them
    past `max_frames`)."""
    if frames > max_frames:
        return np.full(len(boxes), np.inf)
    width, height = box[2] - box[0], box[3] - box[1]
    heights = boxes[:, 3] - boxes[:, 1]
    dx = np.abs((boxes[:, 0] + boxes[:, 2]) - (box[0] + box[2])) / 2
    dy = np.abs((boxes[:, 1] + boxes[:, 3]) - (box[1] + box[3])) / 2
    reach_x, reach_y = FAST_FOLLOW_WIDTHS * width * frames, height * frames / 2
    near = (heights >= 0.8 * height) & (heights <= 1.25 * height) & (dx <= reach_x) & (dy <= reach_y)
    return np.where(near, (dx + dy) / max(reach_x + reach_y, 1e-9), np.inf)


def traced_back(boxes: np.ndarray, ahead: int, later: list[tuple[int, Detections]],
                frame_shape: tuple[int, int]) -> np.ndarray:
    """Where the persons of `boxes`, found `ahead` frames on, are now: each followed through `later` (the box
    overlapping theirs most, sighting to sighting) and moved back along that path, end to end (from one
    sighting to the next a box's top jumped by 50 px, a head found and then not), cut to the frame; none for
    a person not seen again, or out of the frame now. Across an axis on which the box meets the frame's edge
    (a person coming in), its inner side is traced and it stays at the edge: the box's middle moves at half
    their pace, as it grows while they come in, and a box traced by it lay over the edge for frames before
    they came; across the other axis it spans both ends' boxes. Otherwise the middle is traced, the box as large
    as at either end of the path. `ahead` 0: the persons of this frame, as large as found later."""
    h, w = frame_shape
    traced = []
    for box in boxes:
        last, last_at = box, ahead
        for again, frame in later:
            if again - last_at > FOLLOW_GAP_FRAMES:
                break  # lost for longer than a stride: whoever is found there next may be someone else
            if len(frame):
                found = _same_person(last, frame.boxes, again - last_at)
                if found is not None:
                    last, last_at = found, again
        if last_at == ahead:
            continue
        back = ahead / (last_at - ahead)  # how far back along the path, as a share of its length
        now = []
        for low, high, size in ((0, 2, w), (1, 3, h)):
            if box[high] >= size - EDGE_PX and box[low] > EDGE_PX:  # coming in at the far edge
                now.append((box[low] - (last[low] - box[low]) * back, size))
            elif box[low] <= EDGE_PX and box[high] < size - EDGE_PX:  # at the near edge
                now.append((0, box[high] - (last[high] - box[high]) * back))
            elif meets_edge(box, frame_shape):
                # Coming in across the other axis: a part of them found (their legs), the whole of them later;
                # the part's middle is not theirs, so this axis spans both boxes.
                now.append((min(box[low], last[low]), max(box[high], last[high])))
            else:
                middle = (box[low] + box[high]) / 2
                half = max(box[high] - box[low], last[high] - last[low]) / 2
                middle -= ((last[low] + last[high]) / 2 - middle) * back
                now.append((middle - half, middle + half))
        (x0, x1), (y0, y1) = now
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            traced.append((x0, y0, x1, y1))
    return np.float32(traced).reshape(-1, 4)
