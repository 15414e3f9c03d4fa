"""Per-camera dynamic background: a running average frozen under persons, that never invents a person.

The seed started the background from frame 0, so a person in view then was pasted back as
"background" for as long as they stood there. Here every pixel also records whether it has ever
been seen free of persons. A pixel is learnt the first time it is seen free (copied), then follows
lighting and slow change with learning rate `alpha`. Pixels never seen free are filled from the seen
background beside them (mirrored into the hole, `mirror_fill`; or inpainted; or a flat grey): never
from the frame, which holds the person.

The model lives in scene coordinates: a canvas a quarter of the frame larger on each side, onto which
each frame is placed by the camera's motion since the first (`CameraMotion`: pan, tilt, zoom, roll,
shake, estimated from person-free pixels). A moving camera neither smears nor ghosts it, and a pan
back finds what was learnt. While the camera stands still the frame sits on the canvas at whole-pixel
offsets, so nothing is resampled: the model is exactly the plain running average.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property
from math import ceil

import cv2
import numpy as np

from anonengine.config import BackgroundConfig
from anonengine.video import CUT_SHARE, ChangeFinder

SOLID_GREY = 128
CUT_SAMPLES = 10_000  # pixels a cut is judged on, whatever the frame's size (a grid, every few pixels)
CUT_PIXEL_CHANGE = 40  # grey levels
# Most of the seen background changed, yet its grey samples still follow the model's this closely (correlation): the
# same scene in another light, not a cut. A fade from black and an exposure jump were taken for cuts (0.74 to 1.0
# here), and each dropped the persons the hold kept hidden: one standing there, whom the dark frames had let the
# detector find only weakly, came out as filmed in the 8 frames after. Cuts between a red team's shots: 0.19 to 0.27.
SAME_SCENE_CORRELATION = 0.6
GREY_WEIGHTS = np.float32([0.114, 0.587, 0.299])  # B, G, R: OpenCV's grey
FILL_REFRESH_FRAMES = 25
# A found person's middle (GHOST_CORE of their box each way) compared with the model's picture of that place, on
# grey copies GHOST_SIZE (w, h): alike (GHOST_NCC, or within GHOST_LEVELS where both are flat), the model learnt
# the person, standing there before the detector found them. Measured: a person fully learnt 0.95 to 1.0; a
# person before the background learnt without them (the sample's persons on its scenes) under 0.5.
GHOST_CORE = 0.25
GHOST_SIZE = (16, 32)
GHOST_NCC = 0.8
GHOST_LEVELS = 6.0
# The model's picture for that comparison is taken at the nearest pixel: shrunk to GHOST_SIZE, what a finer
# resampling adds is gone (the street clip's 242 checks: the same decisions, correlations within 0.022 of
# Lanczos's; its checks' time 0.30 s against 0.36).
GHOST_RESAMPLE = cv2.INTER_NEAREST
GHOST_SEEN = 0.5  # of the middle seen free before: less, and the model has too little of the place to show anyone
# The model may show a person found now beside where they are: learnt there before the detector first found them,
# and they or the camera moved since (an operator's trial: a person a panning camera followed, missed for 16 frames,
# was held 16 to 33 px aside and drawn back into the masks of those who passed for 4 s). Their middle is looked for
# in the model within GHOST_SEARCH_X of their box's width each way across and GHOST_SEARCH_Y of its height up and
# down, at most GHOST_SEARCH_PLACES places (each a match of GHOST_NCC), shrunk to about GHOST_SEARCH_SIZE (w, h).
GHOST_SEARCH_X = 1.0
GHOST_SEARCH_Y = 0.25
GHOST_SEARCH_PLACES = 3
GHOST_SEARCH_SIZE = (24, 48)
CANVAS_MARGIN = 0.25  # of the frame's size, on each side
# A model that takes over from a dead compositor's (`BackgroundModel.guard`) first learns (copies) a pixel only this
# far from every person's mask, as a share of the frame's diagonal. A mask drawn too tight (the detector's box of
# a person half behind another) leaves a strip of them just outside it: the dead model had learnt that place
# before the person came, and goes on learning at `alpha`; a new one copied the strip at weight 1, and the fill
# drew from it (a shoe mirrored into the hole, 1% of the person, in 2 of 7 kills of a live camera's compositor that
# took over the hold; 0 of 6 with this; 0 of 5 undisturbed). Not for every model: bench/privacy.py's background error rose from 13.5 to 20.6 grey levels
# (a street with persons in view all along, file mode) and 3.2 to 7.7 (crossing, live) with the guard always on.
FIRST_SEEN_GUARD = 0.03
# A still camera's background takes on a lasting change at once, where `alpha` would take seconds: a door opened, a
# van gone, a light switched on. A cell of CHANGE_CELL_PX square, seen free and away from persons (FIRST_SEEN_GUARD),
# whose mean colour stays CHANGE_LEVELS off the model's and within CHANGE_STEADY_LEVELS of how it looked when the
# change began, for `background.adopt_after` frames learnt from in a row, is copied as the first sight of a place
# is. A person the detector misses standing there is shown by the frame anyway, and once found is forgotten by the
# model (`forget_where_learnt`); someone walking is no lasting change. (The background reviewer's door, opened 24
# frames before someone passed it, live: filled closed at alpha 0.05.)
CHANGE_CELL_PX = 8
CHANGE_LEVELS = 20.0
CHANGE_STEADY_LEVELS = 10.0
# Something moving the detector did not find (`BackgroundModel.moving`, `masks.grow_into_motion`): cells of
# MOTION_CELL_PX square whose mean colour is more than MOTION_LEVELS off the model's, from every MOTION_SAMPLE_STEP-th
# pixel each way (a 720p frame: 1.3 ms here).
MOTION_CELL_PX = 8
MOTION_SAMPLE_STEP = 4
MOTION_LEVELS = 25.0
MOTION_GAINS = (0.5, 2.0)
MIRROR_SEAM_PX = 4.0  # where a hole's two mirror images meet, they cross-fade over this width
# Rows are mirror-filled in bands of about this many pixels: the per-pixel index arrays of a band stay in
# the CPU's cache (a 48-MP photo's at once were gigabytes, 3.8 s; 0.8 s in bands; 720p 30 -> 15 ms).
MIRROR_BAND_PX = 1 << 16
# A moving camera's frames are resampled onto the canvas, then the canvas back onto frames: twice
# bilinear blurs fine texture. The second touches only the persons' regions, so it is at least bicubic
# (cobbles under a 3-px shake: 3.1 grey levels off, 2.4 with it); the first resamples every whole frame,
# so `background.resample` chooses (bench/privacy.py, street shake, file mode: linear 2.7, cubic 2.3,
# lanczos 2.0).
RESAMPLE = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
RENDER_RESAMPLE = {"linear": cv2.INTER_CUBIC, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
MAX_CANVAS = 3  # frames a side: how far a canvas grows to keep a recording's waiting frames on it
MOTION_WIDTH = 640  # motion is estimated on a grey copy this wide (320: 0.7 grey levels worse under shake)
MOTION_FEATURES = 200
MIN_TRACKS = 12  # fewer inlier tracks than this: the motion is not known (taken as none)
STILL_PX = 0.2  # motion smaller than this, anywhere in the frame, is noise: the camera stands still
STILL_TRACK_PX = 0.3  # a track shorter than this (on the small copy) stayed put
REDETECT_FRAMES = 10
IDENTITY_2D = np.eye(2)
ZOOM_NOISE_PX = 0.5  # zoom or roll moving the small copy's corners less than this is noise
ZOOM_SURE_PX = 1.0  # more than this is a zoom or roll at once; between the two, when the frame before showed one


def fit_similarity(start: np.ndarray, end: np.ndarray, size: tuple[int, int],
                   zoom_seen_before: bool = True) -> tuple[np.ndarray | None, bool]:
    """The similarity (2x3) taking tracks' `start` points to their `end` points on an image of `size`
    (w, h); None when too few agree, or when most stayed put (the camera is still, whatever moves in
    front of it). With it, whether the tracks show a zoom or roll: a slight one is taken only when the frame
    before showed one too (`zoom_seen_before`), a clear one at once; else the motion is a shift."""
    if len(start) < MIN_TRACKS or (np.linalg.norm(end - start, axis=-1) < STILL_TRACK_PX).mean() >= 0.5:
        return None, False
    matrix, inliers = cv2.estimateAffinePartial2D(start, end, method=cv2.RANSAC, ransacReprojThreshold=0.5,
                                                  maxIters=500, confidence=0.99)
    if matrix is None or inliers.sum() < MIN_TRACKS:
        return None, False
    # A zoom or roll too small to tell from the trackers' noise is taken as none: chained over a long pan,
    # such noise would turn and scale the whole model. So is a slight one in a frame alone: a lens zooms, a hand
    # rolls the camera, over many frames, where the trackers' noise passed ZOOM_NOISE_PX in one frame of a
    # shaking street clip's 200 (0.66 px) and, chained into every later frame's placement, took the rest off the
    # fast path of a pure shift (`warp`). A clear one (ZOOM_SURE_PX) is taken at once: dropped, it would be
    # missing from every later frame's place. Then the shift is the inliers' median.
    half = np.float32(size) / 2
    moved = np.abs((matrix[:, :2] - np.eye(2)) @ half).max()
    zoomed = bool(moved >= ZOOM_NOISE_PX)
    if not (moved >= ZOOM_SURE_PX or (zoomed and zoom_seen_before)):
        agreeing = inliers.ravel() == 1
        matrix = np.float64([[1, 0, 0], [0, 1, 0]])
        matrix[:, 2] = np.median((end - start).reshape(-1, 2)[agreeing], axis=0)
    return matrix, zoomed


class CameraMotion:
    """The camera's motion from one frame to the next: a similarity (shift, zoom, roll) fitted with
    RANSAC to Lucas-Kanade tracks of corners on person-free pixels, on a small grey copy. Corners are
    found again every REDETECT_FRAMES frames, or when too few are left; in between they are followed."""

    def __init__(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._corners: np.ndarray | None = None  # on the previous copy's person-free pixels
        self._followed = 0
        self._zoomed = False  # the tracks of the frame before showed a zoom or roll

    def reset(self) -> None:
        self._previous = None
        self._corners = None
        self._zoomed = False

    def estimate(self, frame: np.ndarray, person_mask: np.ndarray) -> np.ndarray | None:
        """The 2x3 matrix from the previous frame's pixels to this frame's; None while the camera is
        still (or its motion cannot be told: a blank wall, a cut)."""
        h, w = frame.shape[:2]
        scale = min(1.0, MOTION_WIDTH / w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        grey = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA)
        # Persons move on their own: corners on them, or just beside them, would follow them.
        free = cv2.erode(cv2.resize(cv2.bitwise_not(person_mask), size, interpolation=cv2.INTER_NEAREST),
                         np.ones((5, 5), np.uint8))
        previous, self._previous = self._previous, (grey, free)
        corners, self._corners = self._corners, None
        if previous is None or previous[0].shape != grey.shape:
            return None
        if corners is None or len(corners) < MOTION_FEATURES // 3 or self._followed >= REDETECT_FRAMES:
            corners = cv2.goodFeaturesToTrack(previous[0], MOTION_FEATURES, 0.001, 7, mask=previous[1], blockSize=7)
            self._followed = 0
            if corners is None:
                return None
        self._followed += 1
        tracked, status, _ = cv2.calcOpticalFlowPyrLK(previous[0], grey, corners, None, winSize=(15, 15), maxLevel=2)
        found = status.ravel() == 1
        ends = np.round(tracked.reshape(-1, 2)).astype(int)
        found &= (ends[:, 0] >= 0) & (ends[:, 1] >= 0) & (ends[:, 0] < size[0]) & (ends[:, 1] < size[1])
        found[found] = free[ends[found, 1], ends[found, 0]] > 0  # a track that ends on a person followed them
        self._corners = tracked[found]
        matrix, self._zoomed = fit_similarity(corners[found], tracked[found], size, zoom_seen_before=self._zoomed)
        if matrix is None:
            return None
        matrix[:, 2] /= scale  # the shift at full size (zoom and roll do not depend on it)
        corners_moved = cv2.transform(np.float32([[[0, 0], [w, 0], [0, h], [w, h]]]), matrix)[0]
        if np.abs(corners_moved - np.float32([[0, 0], [w, 0], [0, h], [w, h]])).max() < STILL_PX:
            return None
        return matrix


@dataclass(eq=False)
class Scene:
    """What is learnt of one scene (until a cut), on a canvas larger than the frame."""

    mean: np.ndarray  # float32 HxWx3
    seen: np.ndarray  # uint8, 255 = seen free of persons at least once
    origin: np.ndarray  # 3x3 whole-pixel shift, scene coordinates -> canvas pixels: the canvas moves over a long pan
    fill: np.ndarray | None = None  # uint8 HxWx3 like mean, valid on every pixel still unseen
    fill_frame: int = 0


@dataclass(frozen=True, eq=False)
class View:
    """Where one frame lies in its scene. Rendering a view after later frames were learnt is how a
    recording's frame is filled from what the camera saw after it (`background.future_frames`)."""

    scene: Scene
    to_scene: np.ndarray  # 3x3, frame pixel -> scene coordinates
    shape: tuple[int, ...]

    @property
    def to_canvas(self) -> np.ndarray:
        return self.scene.origin @ self.to_scene

    @cached_property
    def scene_extent(self) -> np.ndarray:
        """The (x, y) least (row 0) and greatest (row 1) of the frame's corners in scene coordinates: asked
        of every waiting view at every frame of a moving camera (50 a frame for a recording), and fixed, where
        their place on the canvas moves with it."""
        h, w = self.shape[:2]
        corners = cv2.transform(np.float64([[[0, 0], [w, 0], [0, h], [w, h]]]), self.to_scene[:2])[0]
        return np.stack([corners.min(axis=0), corners.max(axis=0)])


class LastingChanges:
    """Which cells of a still camera's frame changed for good (`CHANGE_*`), frame after frame learnt from."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._place: tuple | None = None  # the scene and canvas box the counts belong to
        self._counts = np.zeros((0, 0), np.uint16)
        self._began = np.zeros((0, 0, 3), np.float32)

    def reset(self) -> None:
        self._place = None

    def stays(self, place: tuple) -> bool:
        """Whether the frame is where the last one was (`place`: the scene and where on its canvas); if not, the
        counts start over, and this frame (the first there) has nothing to compare: the camera moves, or a cut."""
        if place == self._place:
            return True
        self._place, self._counts = place, np.zeros((0, 0), np.uint16)
        return False

    def update(self, frame_cells: np.ndarray, model_cells: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """The cells to copy now (bool), given the frame's and the model's mean colour per cell (float32, h x w x 3)
        and which cells are seen and free of persons (bool), the frame where the last one was (`stays`)."""
        if self._counts.shape != usable.shape:
            self._counts = np.zeros(usable.shape, np.uint16)
            self._began = frame_cells.copy()
        changed = (largest_difference(frame_cells, model_cells) > CHANGE_LEVELS) & usable
        steady = largest_difference(frame_cells, self._began) <= CHANGE_STEADY_LEVELS
        going_on = changed & steady & (self._counts > 0)
        beginning = changed & ~going_on
        self._counts = np.where(going_on, self._counts + 1, beginning.astype(np.uint16))
        self._began[beginning] = frame_cells[beginning]
        lasting = self._counts >= self.frames
        self._counts[lasting] = 0
        return lasting


def largest_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, the largest difference of a channel between two colour images (numpy's max over the channel
    axis takes 0.6 ms on a 160x90 image, this 0.05)."""
    difference = cv2.absdiff(a, b)
    return np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2])


def every_nth(image: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th pixel of `image` each way from its first, contiguous: OpenCV's nearest warp by that exact
    scale, the very pixels of `image[::step, ::step]`, gathered in a tenth of numpy's time (0.03 against 0.26 ms
    every 4th of a 720p frame)."""
    if step == 1 or not image.size:
        return image[::step, ::step]
    h, w = image.shape[:2]
    scale = np.float64([[step, 0, 0], [0, step, 0]])
    return cv2.warpAffine(image, scale, (-(-w // step), -(-h // step)), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)


def cell_grid(shape: tuple[int, ...], cell: int = CHANGE_CELL_PX) -> tuple[int, int]:
    """How many cells `cell` px square (rows, columns) cover a frame of `shape`: the last row and column of cells
    may be partial (a frame 367 px wide), judged by the pixels they have (`padded_for_cells`)."""
    return -(-shape[0] // cell), -(-shape[1] // cell)


def padded_for_cells(image: np.ndarray) -> np.ndarray:
    """`image` grown to whole cells by repeating its last row and column: a partial cell's mean is its own
    pixels' (their edge weighed more), and a person in it counts, as in any other."""
    rows, cols = cell_grid(image.shape)
    bottom, right = rows * CHANGE_CELL_PX - image.shape[0], cols * CHANGE_CELL_PX - image.shape[1]
    if not bottom and not right:
        return image
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE)


def usable_cells(all_free_and_seen: np.ndarray, band: int) -> np.ndarray:
    """The cells (bool) wholly seen and free of persons, and `band` pixels or more from any person's."""
    reach = -(-band // CHANGE_CELL_PX)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1))
    return cv2.erode(all_free_and_seen.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) > 0


class BackgroundModel:
    """`keep_frames`: views this many frames old may still be rendered (a recording's frames waiting for
    their future): their part of the scene stays on the canvas, and the fill covers it."""

    def __init__(self, cfg: BackgroundConfig, keep_frames: int = 0) -> None:
        self.cfg = cfg
        self.motion = CameraMotion() if cfg.follow_camera else None
        self.scene: Scene | None = None
        self._recent: deque[View] = deque(maxlen=keep_frames + 1)  # the last is the current frame's
        self._frames = 0
        self._changes = ChangeFinder()  # the whole picture against the frame before: a cut where little was learnt
        self.guarded = 0  # frames learnt from with FIRST_SEEN_GUARD still to come (`guard`)
        self._lasting = LastingChanges(cfg.adopt_after) if cfg.adopt_after else None

    @property
    def view(self) -> View | None:
        """The latest frame's view."""
        return self._recent[-1] if self._recent else None

    @property
    def seen(self) -> np.ndarray | None:
        """Which of the current frame's pixels have been seen free of persons (255)."""
        return None if self.scene is None else self.seen_in(None, self.view)

    def seen_in(self, box: tuple[int, int, int, int] | None, view: View) -> np.ndarray:
        """Which of the pixels of `view`'s frame in `box` (default all) have been seen free of persons (255)."""
        return self._to_frame(view.scene.seen, cv2.INTER_NEAREST, box, view=view)

    def guard(self, frames: int) -> None:
        """For the next `frames` frames learnt from, a pixel is first learnt only away from persons
        (FIRST_SEEN_GUARD): this model starts where another learnt for a while, persons in view."""
        self.guarded = frames

    def reset(self) -> None:
        self.scene = None
        self._recent.clear()
        self._changes = ChangeFinder()
        if self._lasting is not None:
            self._lasting.reset()
        if self.motion is not None:
            self.motion.reset()

    def update(self, frame: np.ndarray, person_mask: np.ndarray, learn: bool = True) -> bool:
        """Places `frame` (`place`) and learns from its pixels outside `person_mask` (uint8, 255 = person).

        Without `learn`, the frame is placed (the camera's motion, a cut) but not learnt from (the compositor
        learns from the frames the detector looked at: the others' masks are guesses).

        Returns True when the frame was a scene cut.
        """
        cut = self.place(frame, person_mask)
        if learn:
            self.learn(frame, person_mask)
        return cut

    def learn(self, frame: np.ndarray, person_mask: np.ndarray) -> None:
        """Learns from the pixels of the frame just placed outside `person_mask` (uint8, 255 = person)."""
        box, to_box = self._footprint(self.view)
        self._learn(frame, person_mask, box, to_box)

    def place(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Puts `frame` in its scene: the camera's motion since the frame before (estimated where `person_mask`
        shows no person), and a scene cut or a change of light.

        Returns True when the frame was a scene cut: the frame starts a new scene (frames of the old one
        still waiting keep theirs).
        """
        cut = False
        self._frames += 1
        changed = self._changes.look(frame).share if self.cfg.cut_threshold > 0 else 0.0
        moved = self.motion.estimate(frame, person_mask) if self.motion is not None else None
        view = self.view
        if view is None or view.shape != frame.shape:
            self._start(frame.shape)
        else:
            to_scene = view.to_scene
            if moved is not None:
                to_scene = to_scene @ np.linalg.inv(np.vstack([moved, [0, 0, 1]]))
            self._recent.append(View(self.scene, to_scene, frame.shape))
            if moved is not None:
                self._keep_on_canvas()
            if self.cfg.cut_threshold > 0:
                cut, light = self._cut_or_relit(frame, person_mask, changed)
                if cut:
                    # What was learnt shows another scene: nothing of it may fill this one.
                    self._start(frame.shape, to_scene=to_scene, origin=self.scene.origin)
                elif light is not None:
                    self._relight(light, to_scene, frame.shape)
        return cut

    def moving(self, frame: np.ndarray, view: View | None = None) -> np.ndarray | None:
        """Which cells (MOTION_CELL_PX square, rows x columns, bool) of `frame`, whose view is `view` (default the
        frame just placed), differ from what the model learnt there (MOTION_LEVELS): something moves there, or came
        since. Only cells the model has wholly seen are told; None where it has seen none of the frame."""
        step = MOTION_SAMPLE_STEP
        now, learnt, seen = self._samples(frame, step, view or self.view)
        rows, cols = cell_grid(frame.shape, MOTION_CELL_PX)
        if not seen.any():
            return None
        per_cell = MOTION_CELL_PX // step

        def cells(image: np.ndarray) -> np.ndarray:
            grown = cv2.copyMakeBorder(image, 0, rows * per_cell - image.shape[0], 0, cols * per_cell - image.shape[1],
                                       cv2.BORDER_REPLICATE)
            return cv2.resize(grown, (cols, rows), interpolation=cv2.INTER_AREA)

        all_seen = cells(seen.astype(np.uint8) * np.uint8(255)) == 255
        if not all_seen.any():
            return None
        now_cells, learnt_cells = cells(now).astype(np.float32), cells(learnt).astype(np.float32)
        # The camera's exposure, or a light's flicker, changes every cell alike, too little to be relit
        # (`_cut_or_relit`): told in the frame's light, each channel's median ratio over the cells seen (every
        # other cell each way: 0.1 against 0.5 ms).
        some = all_seen[::2, ::2]
        ratios = ((now_cells[::2, ::2][some] + 1) / (learnt_cells[::2, ::2][some] + 1) if some.any()
                  else np.ones((1, 3), np.float32))
        # Each channel's ratios in a row of their own: numpy's median along a row is twice as quick.
        gain = np.median(np.ascontiguousarray(ratios.T), axis=1).clip(*MOTION_GAINS).astype(np.float32)
        # A moving camera's frame lies on the model to a pixel or so, and differs from it along the scene's sharp
        # edges: a shake hid 0.45% of the frame more than the persons' masks, drawn there from the model, which shows
        # the scene. Told against the model moved by 4 or 8 px each way as well (the nearest of them), 0.05%; but the
        # edges of persons were lost with the scene's: of a red team's clips' (frame, person) pairs shown, a walker
        # smeared in a pan 22 -> 33 (off: 36), small walkers at crf 40 with a shake 20 -> 30 (off: 42).
        return (largest_difference(now_cells, learnt_cells * gain) > MOTION_LEVELS) & all_seen

    def _learn(self, frame: np.ndarray, person_mask: np.ndarray, box: tuple[int, int, int, int],
               to_box: np.ndarray | None) -> None:
        """The running average over the canvas `box` the frame covers, `to_box` taking it there (None: whole
        pixels), where no person is; a pixel seen free for the first time is copied."""
        scene = self.scene
        roi = slice(box[1], box[3]), slice(box[0], box[2])
        free = cv2.bitwise_not(person_mask)
        if to_box is None:  # whole-pixel placement: the frame's own pixels, resampled not at all
            image = frame
        else:
            size = (box[2] - box[0], box[3] - box[1])
            image = warp(frame, to_box, size, RESAMPLE[self.cfg.resample], exact=True)
            # Outside the frame counts as not seen now, and the border blends with nothing: shrink by one.
            free = cv2.warpAffine(free, to_box, size, flags=cv2.INTER_NEAREST, borderValue=0)
            free = cv2.erode(free, np.ones((3, 3), np.uint8))
        mean, seen = scene.mean[roi], scene.seen[roi]
        learnable = cv2.bitwise_and(free, seen)
        if self._lasting is not None:
            place = (id(scene), box, None if to_box is None else to_box.tobytes())
            lasting = self._lasting_cells(image, mean, learnable, place)
            if lasting is not None:
                cv2.accumulateWeighted(image, mean, 1.0, mask=lasting)  # weight 1: a copy
        cv2.accumulateWeighted(image, mean, self.cfg.alpha, mask=learnable)
        first_seen = cv2.bitwise_and(free, cv2.bitwise_not(seen))
        x, y, w, h = cv2.boundingRect(first_seen)  # newly uncovered pixels lie around persons: work there
        if w:
            part = slice(y, y + h), slice(x, x + w)
            first_seen = self._first_seen_guarded(first_seen[part], free, part, frame.shape)
            cv2.accumulateWeighted(image[part], mean[part], 1.0, mask=first_seen)  # weight 1: a copy
            cv2.bitwise_or(seen[part], first_seen, dst=seen[part])
        self.guarded = max(0, self.guarded - 1)

    def _first_seen_guarded(self, first_seen: np.ndarray, free: np.ndarray, part: tuple[slice, slice],
                            frame_shape: tuple[int, ...]) -> np.ndarray:
        """`first_seen` (of `part`), less its pixels near persons while the model is guarded (`guard`)."""
        if self.guarded <= 0:
            return first_seen
        band = round(FIRST_SEEN_GUARD * float(np.hypot(*frame_shape[:2])))
        return cv2.bitwise_and(first_seen, away_from_persons(free, band, part))

    def _lasting_cells(self, image: np.ndarray, mean: np.ndarray, learnable: np.ndarray, place: tuple
                       ) -> np.ndarray | None:
        """Where a still camera's frame changed for good (`LastingChanges`): a mask of the frame's pixels (uint8,
        255) to copy into the model, or None. `image`, `mean` and `learnable` (255: seen and free) are the frame's
        place on the canvas; `place` says where that is (the camera moved: it is another, and the counts start
        over)."""
        if not self._lasting.stays(place):  # the camera moves: no cell is compared (3 to 5 ms a 720p frame)
            return None
        rows, cols = cell_grid(image.shape)
        cells = (cols, rows)
        # uint8: each cell's mean rounded half up (integer sums), as the tensor model rounds it
        frame_cells = cv2.resize(padded_for_cells(image), cells, interpolation=cv2.INTER_AREA).astype(np.float32)
        model_cells = cv2.resize(padded_for_cells(mean), cells, interpolation=cv2.INTER_AREA)
        all_learnable = cv2.resize(padded_for_cells(learnable), cells, interpolation=cv2.INTER_AREA) == 255
        return self._lasting_mask(frame_cells, model_cells, all_learnable, image.shape)

    def _lasting_mask(self, frame_cells: np.ndarray, model_cells: np.ndarray, all_learnable: np.ndarray,
                      frame_shape: tuple[int, ...]) -> np.ndarray | None:
        band = round(FIRST_SEEN_GUARD * float(np.hypot(*frame_shape[:2])))
        lasting = self._lasting.update(frame_cells, model_cells, usable_cells(all_learnable, band))
        if not lasting.any():
            return None
        whole = np.kron(lasting, np.ones((CHANGE_CELL_PX, CHANGE_CELL_PX), bool)) * np.uint8(255)
        return np.ascontiguousarray(whole[: frame_shape[0], : frame_shape[1]])

    def _start(self, shape: tuple[int, ...], to_scene: np.ndarray | None = None,
               origin: np.ndarray | None = None) -> None:
        """A new scene: at the first frame, a new size, or a cut (where the frame keeps its place)."""
        h, w = shape[:2]
        if origin is None:
            margin_x, margin_y = (round(w * CANVAS_MARGIN), round(h * CANVAS_MARGIN)) if self.motion else (0, 0)
            canvas = (h + 2 * margin_y, w + 2 * margin_x)
            origin = np.array([[1.0, 0, margin_x], [0, 1.0, margin_y], [0, 0, 1]])
        else:
            canvas = self.scene.seen.shape
        if to_scene is None:
            self._recent.clear()
        self._take_up(Scene(*self._blank(canvas), origin.copy()), np.eye(3) if to_scene is None else to_scene, shape)

    def _take_up(self, scene: Scene, to_scene: np.ndarray, shape: tuple[int, ...]) -> None:
        """`scene` is the one learnt from now on, the frame just placed its first (its view replaces the one it had
        in the scene before, if any)."""
        self.scene = scene
        if self._recent:
            self._recent.pop()
        self._recent.append(View(scene, to_scene, shape))

    @staticmethod
    def _placement(view: View) -> tuple[int, int] | None:
        """The frame's offset on the canvas when it sits there at whole pixels, unscaled; else None."""
        m = view.to_canvas
        if _near(m[:2, :2], IDENTITY_2D, 1e-9) and _near(m[:2, 2], np.round(m[:2, 2]), 1e-6):
            return round(float(m[0, 2])), round(float(m[1, 2]))
        return None

    def _footprint(self, view: View) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
        """The canvas box (x0, y0, x1, y1) the frame covers, and the 2x3 matrix from the frame to it
        (None: a whole-pixel offset, where the box is the frame's own size)."""
        h, w = view.shape[:2]
        offset = self._placement(view)
        if offset is not None:
            return (offset[0], offset[1], offset[0] + w, offset[1] + h), None
        (left, top), (right, bottom) = _extent(view)
        ch, cw = view.scene.seen.shape
        x0, y0 = np.clip(np.floor([left, top]).astype(int), 0, [cw, ch])
        x1, y1 = np.clip(np.ceil([right, bottom]).astype(int) + 1, 0, [cw, ch])
        to_box = view.to_canvas[:2].copy()
        to_box[:, 2] -= (x0, y0)
        return (int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))), to_box

    def _kept(self) -> list[View]:
        """The views of the current scene that may still be rendered, oldest first."""
        return [v for v in self._recent if v.scene is self.scene]

    def _keep_on_canvas(self) -> None:
        """After a long pan the frame nears the canvas' edge: the canvas moves with it, by whole pixels,
        forgetting the scene farthest behind. Frames still waiting stay on it too, the canvas growing
        for them up to MAX_CANVAS frames a side; past that the current frame wins."""
        scene = self.scene
        ch, cw = scene.seen.shape
        extents = np.array([_extent(v) for v in self._kept()])  # (least, greatest) corners; the current last
        (x0, y0), (x1, y1) = extents[-1]
        (ux0, uy0), (ux1, uy1) = extents[:, 0].min(axis=0), extents[:, 1].max(axis=0)
        if ux0 >= 0 and uy0 >= 0 and ux1 <= cw and uy1 <= ch:
            return
        h, w = self.view.shape[:2]
        if ux1 - ux0 > cw or uy1 - uy0 > ch:  # the waiting frames need a larger canvas
            size = (min(max(cw, ceil(ux1 - ux0) + 2), round(MAX_CANVAS * w)),
                    min(max(ch, ceil(uy1 - uy0) + 2), round(MAX_CANVAS * h)))
            if size != (cw, ch):
                self._resize_canvas(size)
                cw, ch = size
        if ux1 - ux0 > cw or uy1 - uy0 > ch:
            (ux0, uy0), (ux1, uy1) = (x0, y0), (x1, y1)
        # Centre the footprints again.
        dx, dy = round((cw - (ux1 - ux0)) / 2 - ux0), round((ch - (uy1 - uy0)) / 2 - uy0)
        scene.mean, scene.seen = self._shifted(scene.mean, dx, dy), self._shifted(scene.seen, dx, dy)
        if scene.fill is not None:
            scene.fill = self._shifted(scene.fill, dx, dy)
        scene.origin = np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1]]) @ scene.origin

    def _resize_canvas(self, size: tuple[int, int]) -> None:
        """A larger canvas (w, h), the old one at its top left (the re-centring that follows moves it)."""
        scene = self.scene
        ch, cw = scene.seen.shape
        mean, seen = self._blank((size[1], size[0]))
        mean[:ch, :cw], seen[:ch, :cw] = scene.mean, scene.seen
        scene.mean, scene.seen, scene.fill = mean, seen, None

    # --- the canvas' pixels: NumPy arrays and OpenCV here; tensors on a GPU in `background_torch` ---------
    @staticmethod
    def _blank(canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A canvas (h, w) of nothing learnt: its running average and where it was seen."""
        return np.zeros((*canvas, 3), np.float32), np.zeros(canvas, np.uint8)

    @staticmethod
    def _zeros_like(image: np.ndarray) -> np.ndarray:
        return np.zeros_like(image)

    def _shifted(self, image, dx: int, dy: int):
        """`image` moved by whole pixels (dx, dy) on a canvas of its size; zeros where nothing comes."""
        h, w = image.shape[:2]
        out = self._zeros_like(image)
        xs, ys = slice(max(0, dx), min(w, w + dx)), slice(max(0, dy), min(h, h + dy))
        if xs.stop > xs.start and ys.stop > ys.start:
            out[ys, xs] = image[ys.start - dy : ys.stop - dy, xs.start - dx : xs.stop - dx]
        return out

    def _any_seen(self, scene: Scene) -> bool:
        return cv2.countNonZero(scene.seen) > 0

    def _to_frame(self, canvas_image: np.ndarray, interpolation: int, box=None, step: int = 1,
                  view: View | None = None) -> np.ndarray:
        """The part of a canvas-sized image under the frame's `box` (x0, y0, x1, y1; default all of it),
        every `step`-th pixel; the frame is `view`'s (default the latest)."""
        view = view or self.view
        h, w = view.shape[:2]
        x0, y0, x1, y1 = box or (0, 0, w, h)
        offset = self._placement(view)
        if offset is not None:
            ox, oy = offset
            return self._every_nth(canvas_image[oy + y0 : oy + y1, ox + x0 : ox + x1], step)
        # Canvas position of each output pixel (x, y): to_canvas @ (x0 + x * step, y0 + y * step).
        m = view.to_canvas[:2].copy()
        m[:, 2] += m[:, :2] @ (x0, y0)
        m[:, :2] *= step
        size = (len(range(x0, x1, step)), len(range(y0, y1, step)))
        return self._warp_back(canvas_image, m, size, interpolation)

    _every_nth = staticmethod(every_nth)

    @staticmethod
    def _warp_back(canvas_image: np.ndarray, inverse: np.ndarray, size: tuple[int, int], interpolation: int):
        """out(x, y) = canvas_image(inverse @ (x, y, 1)), `size` (w, h), black outside the canvas."""
        interpolation = warp_interpolation(interpolation, inverse)
        if interpolation in (cv2.INTER_LANCZOS4, cv2.INTER_NEAREST) and _near(inverse[:, :2], IDENTITY_2D, 1e-9):
            shifted = _shifted_window if interpolation == cv2.INTER_LANCZOS4 else _shifted_nearest
            return shifted(canvas_image, inverse[:, 2], size)
        return cv2.warpAffine(canvas_image, inverse, size, flags=interpolation | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _cut_or_relit(self, frame: np.ndarray, person_mask: np.ndarray, changed: float
                      ) -> tuple[bool, tuple[np.ndarray, np.ndarray] | None]:
        """(whether the frame starts another scene, the light it shows this one in where it is this one relit).

        A cut: most of the seen, person-free background changed at once (sampled on a grid, for speed); where too
        little of it was seen to tell, most of the whole picture (`changed`, its share since the frame before).
        A first shot of persons filling the frame had learnt next to nothing: its cut went unseen, and the next
        shot's background filled the frames waiting for the look-ahead (a format red team's clip: a bus in front
        of a football bench for the 30 frames before the cut). The reader takes the same change for a cut (the
        frames either side are detected); a person moving on changes a band of the picture a frame, not most.
        Most of it changed in a way that follows what was learnt (`relight`) is this scene in another light: a fade
        or the camera's exposure, not a cut (a cut drops the persons the hold keeps hidden)."""
        samples = self._cut_samples(frame, person_mask)
        if samples is None:
            return changed >= CUT_SHARE, None
        now, learnt, usable = samples
        diff = cv2.absdiff(now, learnt)
        largest = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])
        if np.count_nonzero((largest > CUT_PIXEL_CHANGE) & usable) <= self.cfg.cut_threshold * np.count_nonzero(usable):
            return False, None
        light = relight(now, learnt, usable)
        return light is None, light

    def _cut_samples(self, frame: np.ndarray, person_mask: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The frame's pixels and the model's (uint8 BGR) on the grid a cut is judged on, and where they are usable
        (bool: seen, no person); None where fewer than 100 are."""
        step = cut_sample_step(frame.shape)
        now, learnt, seen = self._samples(frame, step, self.view)
        usable = seen & (every_nth(person_mask, step) == 0)
        if np.count_nonzero(usable) < 100:
            return None
        return now, learnt, usable

    def _samples(self, frame: np.ndarray, step: int, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every `step`-th pixel each way of `frame` and of the model's picture of its `view` (uint8 BGR, the model's
        at the nearest pixel), and which of them the model has seen (bool)."""
        seen = self._to_frame(view.scene.seen, cv2.INTER_NEAREST, step=step, view=view)
        mean = cv2.convertScaleAbs(self._to_frame(view.scene.mean, cv2.INTER_NEAREST, step=step, view=view))
        return every_nth(frame, step), mean, seen > 0

    def _relight(self, light: tuple[np.ndarray, np.ndarray], to_scene: np.ndarray, shape: tuple[int, ...]) -> None:
        """The frame starts a scene of its own, as at a cut, but from what was learnt of this one in its light
        (`light`: each channel's gain and offset): what was seen stays seen, and the frames still waiting keep
        the old light."""
        old = self.scene
        self._take_up(Scene(self._in_light(old.mean, light), self._copy(old.seen), old.origin.copy()), to_scene, shape)

    @staticmethod
    def _in_light(mean: np.ndarray, light: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        relit = mean * light[0] + light[1]
        return np.clip(relit, 0, 255, out=relit)

    @staticmethod
    def _copy(image: np.ndarray) -> np.ndarray:
        return image.copy()

    def forget_where_learnt(self, frame: np.ndarray, boxes: np.ndarray, view: View | None = None,
                            nearby: np.ndarray | None = None) -> int:
        """Forgets the places of the persons in `boxes` (of `frame`, whose view is `view`, default the latest)
        that the model learnt with them there: someone standing still before the detector first found them
        (small, half hidden, in a pose it missed) was learnt into the background, and once found was hidden
        behind their own picture. Forgotten, their place is never-seen (filled from around, learnt afresh once
        they leave). `nearby`: for each box, whether the places around it are looked at too (`_learnt_nearby`:
        for persons just found; the default, none). Returns how many places were forgotten."""
        return self.forget_where_shown(boxes, lambda core: frame[core[1] : core[3], core[0] : core[2]],
                                       frame.shape[:2], view, nearby)

    def forget_where_shown(self, boxes: np.ndarray, picture, frame_shape: tuple[int, int],
                           view: View | None = None, nearby: np.ndarray | None = None) -> int:
        """`forget_where_learnt` with the persons' pictures from elsewhere: `picture(core)` gives the pixels of
        a box's middle (x0, y0, x1, y1) as the person was found there (in a frame to come), or None where they
        cannot be had, and the place is forgotten unchecked (drawn from the fill: never the person)."""
        if self.scene is None or not len(boxes):
            return 0
        view, forgotten = view or self.view, 0
        h, w = frame_shape
        for i, box in enumerate(boxes):
            bw, bh = box[2] - box[0], box[3] - box[1]
            core = (int(max(0, box[0] + GHOST_CORE * bw)), int(max(0, box[1] + GHOST_CORE * bh)),
                    int(min(w, box[2] - GHOST_CORE * bw)), int(min(h, box[3] - GHOST_CORE * bh)))
            x0, y0, x1, y1 = core
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            seen = cv2.countNonZero(self.seen_in(core, view)) >= GHOST_SEEN * (x1 - x0) * (y1 - y0)
            look_around = nearby is not None and bool(nearby[i])
            if not (seen or look_around):
                continue
            pixels = picture(core)
            if seen and (pixels is None or looks_alike(pixels, self.render(core, view, GHOST_RESAMPLE))):
                self._forget(box, view)
                forgotten += 1
            if pixels is None or not look_around:
                continue
            for dx, dy in self._learnt_nearby(pixels, core, box, view, frame_shape):
                # A copy of the person, or what is there? Background that looks like their middle (a pillar like
                # a narrow person's legs) is shown as it is by the frame there too.
                there = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
                now = picture(there)
                # Without the fill: a forget just made is not worth a fill of the whole canvas made anew.
                if now is None or not looks_alike(now, self.render(there, view, GHOST_RESAMPLE, fill=False)):
                    self._forget(np.float32(box) + np.float32([dx, dy, dx, dy]), view)
                    forgotten += 1
        return forgotten

    def _learnt_nearby(self, pixels: np.ndarray, core: tuple[int, int, int, int], box: np.ndarray, view: View,
                       frame_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The shifts (dx, dy) from `core` (a found person's middle, `pixels` as found) to the places around it
        where the model shows those pixels (`GHOST_SEARCH_*`; a flat middle has nothing to be found by)."""
        x0, y0, x1, y1 = core
        h, w = frame_shape
        reach_x, reach_y = int(GHOST_SEARCH_X * (box[2] - box[0])), int(GHOST_SEARCH_Y * (box[3] - box[1]))
        window = (max(0, x0 - reach_x), max(0, y0 - reach_y), min(w, x1 + reach_x), min(h, y1 + reach_y))
        # Drawn at every `step`-th pixel (nearest: cheap) and shrunk by `scale` more (averaged: no aliasing between
        # the two pictures, taken at different places), to about GHOST_SEARCH_SIZE.
        shrink = max(1.0, min((x1 - x0) / GHOST_SEARCH_SIZE[0], (y1 - y0) / GHOST_SEARCH_SIZE[1]))
        step = max(1, int(shrink / 2))
        scale = step / shrink

        def grey(image: np.ndarray) -> np.ndarray:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
            return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image

        template = grey(pixels[::step, ::step])
        if template.std() < GHOST_LEVELS or min(template.shape) < 4:
            return []
        model = grey(self.render(window, view, GHOST_RESAMPLE, step, fill=False))  # learnt: the seen pixels
        if model.shape[0] < template.shape[0] or model.shape[1] < template.shape[1]:
            return []
        scores = cv2.matchTemplate(model, template, cv2.TM_CCOEFF_NORMED)
        th, tw = template.shape
        shifts = []
        for _ in range(GHOST_SEARCH_PLACES):
            _, best, _, (bx, by) = cv2.minMaxLoc(scores)
            if best < GHOST_NCC:
                break
            shifts.append((round(window[0] + bx / scale * step) - x0, round(window[1] + by / scale * step) - y0))
            scores[max(0, by - th // 2) : by + th // 2 + 1, max(0, bx - tw // 2) : bx + tw // 2 + 1] = -1
        return shifts

    def _forget(self, box: np.ndarray, view: View) -> None:
        """The canvas under `box` of `view`'s frame is never-seen again (and the fill is made anew: it was
        kept on the promise that unseen pixels only become seen)."""
        scene = view.scene
        corners = np.float64([[[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]])
        on_canvas = cv2.transform(corners, view.to_canvas[:2])[0]
        ch, cw = scene.seen.shape[:2]
        x0, y0 = np.clip(np.floor(on_canvas.min(axis=0)).astype(int), 0, (cw, ch))
        x1, y1 = np.clip(np.ceil(on_canvas.max(axis=0)).astype(int), 0, (cw, ch))
        scene.seen[y0:y1, x0:x1] = 0
        scene.fill = None

    def render(self, box: tuple[int, int, int, int] | None = None, view: View | None = None,
               interpolation: int | None = None, step: int = 1, fill: bool = True) -> np.ndarray:
        """The background (uint8 BGR) in `box` (x0, y0, x1, y1; default the whole frame) of `view`'s frame
        (default the latest), with all that is learnt by now; every `step`-th pixel.

        Pixels never seen free of persons come from the fill, never from a frame (without `fill`: black).
        """
        if self.scene is None:
            raise RuntimeError("BackgroundModel.render() before the first update()")
        view = view or self.view
        scene = view.scene
        if interpolation is None:
            interpolation = RENDER_RESAMPLE[self.cfg.resample]
        image = cv2.convertScaleAbs(self._to_frame(scene.mean, interpolation, box, step, view))
        unseen = cv2.compare(self._to_frame(scene.seen, cv2.INTER_NEAREST, box, step, view), 0, cv2.CMP_EQ)
        if not fill:
            image[unseen > 0] = 0
        elif cv2.countNonZero(unseen):
            cv2.copyTo(self._to_frame(self._current_fill(scene), cv2.INTER_LINEAR, box, step, view), unseen, image)
        return image

    def blend_into(self, out: np.ndarray, box: tuple[int, int, int, int], view: View, alpha: np.ndarray) -> None:
        """Draws the background of `box` in `view` over `out` (the frame's pixels in `box`), in place, each
        pixel weighted by `alpha` (uint8; 255: the background alone): the compositor's blend, done where the
        model's pixels live."""
        blend_into(out, self.render(box, view), alpha)

    def _current_fill(self, scene: Scene) -> np.ndarray:
        # Unseen pixels only ever become seen (until a cut), so a fill stays valid where it is used; it
        # is redone now and then to follow what was learnt around the holes since (an old scene's, whose
        # frames are still waiting after a cut, is kept).
        if scene.fill is None or (scene is self.scene and self._frames - scene.fill_frame >= FILL_REFRESH_FRAMES):
            scene.fill = self._make_fill(scene)
            # Grey for want of anything seen is redone next frame, not kept for the refresh period.
            scene.fill_frame = self._frames if self._any_seen(scene) else self._frames - FILL_REFRESH_FRAMES
        return scene.fill

    def _make_fill(self, scene: Scene) -> np.ndarray:
        """A canvas-sized fill, made where the frames that may still be rendered are (the rest of the
        canvas is not shown)."""
        fill = self._grey_like(scene.mean)
        if self.cfg.fill == "solid" or not self._any_seen(scene):
            return fill
        boxes = np.array([self._footprint(v)[0] for v in self._recent if v.scene is scene]
                         or [(0, 0, scene.seen.shape[1], scene.seen.shape[0])])
        x0, y0 = boxes[:, :2].min(axis=0)
        x1, y1 = boxes[:, 2:].max(axis=0)
        fill[y0:y1, x0:x1] = self._filled_part(scene, (slice(y0, y1), slice(x0, x1)))
        return fill

    @staticmethod
    def _grey_like(mean: np.ndarray) -> np.ndarray:
        return np.full(mean.shape, SOLID_GREY, np.uint8)

    def _filled_part(self, scene: Scene, part: tuple[slice, slice]) -> np.ndarray:
        return self._filled(cv2.convertScaleAbs(scene.mean[part]), scene.seen[part])

    def _filled(self, mean: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """`mean` (uint8) with its unseen pixels filled (`background.fill`)."""
        missing = seen == 0
        if self.cfg.fill == "mirror":
            filled, missing = mirror_fill(mean, missing)
        else:
            filled = np.full_like(mean, SOLID_GREY)
        if missing.any():
            filled[missing] = self._inpainted(mean, seen)[missing]
        return filled

    def _inpainted(self, mean: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Telea inpainting of the unseen pixels: costly at full size, and smooth anyway, so done small
        (`fill_scale` wide) and upscaled."""
        h, w = seen.shape
        scale = min(1.0, self.cfg.fill_scale / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(mean, size, interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(cv2.bitwise_not(seen), size, interpolation=cv2.INTER_NEAREST)
        # The hole is every unseen pixel: unseen pixels hold no data, whatever the frame showed there.
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        filled = cv2.inpaint(small, small_hole, 3, cv2.INPAINT_TELEA)
        return cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)


def away_from_persons(free: np.ndarray, band: int, part: tuple[slice, slice]) -> np.ndarray:
    """The pixels of `free` (255: no person) in `part` that are at least `band` pixels from any that is not
    (each way, on a grid of a quarter of `band`: a few pixels more near persons, never less)."""
    ys, xs = part
    if band < 1:
        return free[part]
    step = max(1, band // 4)
    reach = -(-band // step)
    # The part grown by `band`, so that a person just outside it counts; then cells of `step` pixels.
    y0, x0 = max(0, ys.start - band), max(0, xs.start - band)
    y1, x1 = min(free.shape[0], ys.stop + band), min(free.shape[1], xs.stop + band)
    around = free[y0:y1, x0:x1]
    cells = (-(-(x1 - x0) // step), -(-(y1 - y0) // step))
    padded = cv2.copyMakeBorder(around, 0, cells[1] * step - (y1 - y0), 0, cells[0] * step - (x1 - x0),
                                cv2.BORDER_REPLICATE)
    # A cell is free when all of its pixels are (their mean 255); eroded by `reach` cells each way.
    coarse = cv2.resize(padded, cells, interpolation=cv2.INTER_AREA)
    _, coarse = cv2.threshold(coarse, 254, 255, cv2.THRESH_BINARY)
    coarse = cv2.erode(coarse, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1)))
    fine = cv2.resize(coarse, (cells[0] * step, cells[1] * step), interpolation=cv2.INTER_NEAREST)
    return fine[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]


def looks_alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two BGR pictures of one place show the same thing (`GHOST_*`): their grey copies correlated,
    or both flat and within a few levels."""
    ga, gb = (cv2.resize(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), GHOST_SIZE, interpolation=cv2.INTER_AREA)
              .astype(np.float32) for x in (a, b))
    da, db = ga - ga.mean(), gb - gb.mean()
    spread = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if spread > 0 and min(da.std(), db.std()) >= GHOST_LEVELS:
        return float((da * db).sum()) / spread >= GHOST_NCC
    return float(np.abs(ga - gb).mean()) <= GHOST_LEVELS


def relight(frame: np.ndarray, model: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Where `frame`'s pixels (BGR uint8 samples) show the scene `model`'s do, brighter or darker (a fade, the
    camera's exposure: their grey levels where `usable` (bool) correlated at SAME_SCENE_CORRELATION or more), the
    light that takes the model's to the frame's: each channel's gain and offset (least squares); else None. Either
    one flat (a black frame) tells nothing: None."""
    now, learnt = (image[usable].astype(np.float32) for image in (frame, model))
    grey = [pixels @ GREY_WEIGHTS for pixels in (now, learnt)]
    spreads = [float(g.std()) for g in grey]
    if min(spreads) < 1.0:
        return None
    together = float(((grey[0] - grey[0].mean()) * (grey[1] - grey[1].mean())).mean())
    if together / (spreads[0] * spreads[1]) < SAME_SCENE_CORRELATION:
        return None
    now_mean, learnt_mean = now.mean(axis=0), learnt.mean(axis=0)
    spread = learnt.var(axis=0)
    gain = np.where(spread >= 1.0, ((now - now_mean) * (learnt - learnt_mean)).mean(axis=0) / np.maximum(spread, 1.0),
                    1.0)
    return gain.astype(np.float32), (now_mean - gain * learnt_mean).astype(np.float32)


def cut_sample_step(shape: tuple[int, ...]) -> int:
    """The grid step a frame of `shape` is sampled at to tell a cut: about CUT_SAMPLES pixels at any size. Every
    4th pixel of a 720p frame (57,600) took 1.1 ms a frame of the compositor's 21, a 4K frame's four times that,
    for a decision that half of them must change."""
    return max(1, int(np.sqrt(shape[0] * shape[1] / CUT_SAMPLES)))


def _near(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    """`np.allclose(a, b, atol=atol)` for finite values, without its generality: called about 20 times a
    frame, allclose took 1.5 ms of a 720p frame's 40 ms of compositing."""
    return bool((np.abs(a - b) <= atol + 1e-5 * np.abs(b)).all())


def warp_interpolation(interpolation: int, matrix: np.ndarray) -> int:
    """The interpolation a warp by `matrix` (2x3, either way) is done with: Lanczos is kept for a pure shift (a
    pan, a shake: nearly every frame of a moving camera), which is separable (`warp`: 5.5 ms a 720p frame
    here), and a zoom or roll in Lanczos is done bicubic: OpenCV's general Lanczos warp takes 72 ms a 720p
    frame, its bicubic 14. A noisy estimate of a tiny zoom, chained into every later frame's placement, had put
    the rest of a street clip on that slow path (its compositor: 14.5 s of CPU against 4.9)."""
    if interpolation == cv2.INTER_LANCZOS4 and not _near(matrix[:, :2], IDENTITY_2D, 1e-9):
        return cv2.INTER_CUBIC
    return interpolation


def warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], interpolation: int,
         exact: bool = False) -> np.ndarray:
    """`cv2.warpAffine` of `image` by the 2x3 `matrix` to `size` (w, h); a pure shift in Lanczos is done as
    a separable 8-tap filter and a crop (12 against 146 ms a 720p frame here: a panning or shaking
    camera's motion is a pure shift, `fit_similarity`), equal to OpenCV's within one grey level.

    `exact`: that path's pixels in float32, unrounded (for the running average, which takes either). OpenCV
    filters uint8 into float32 in half the time it takes to filter uint8 into uint8, or less (3.3 against 6.3
    to 12 ms a 720p frame, the more the sharper its edges), so uint8 is filtered into float32 too and rounded
    after (to the same pixels but one level in about 250,000, where the sums' order differs)."""
    interpolation = warp_interpolation(interpolation, matrix)
    if interpolation != cv2.INTER_LANCZOS4:
        return cv2.warpAffine(image, matrix, size, flags=interpolation)
    # out(x) = image(x - t) = sum over j in -3..4 of image(x + o + j) * L(f - j), o = floor(-t), f = -t - o.
    offset = np.floor(-matrix[:, 2])
    taps = np.arange(-3, 5)
    kx, ky = (np.sinc(f - taps) * np.sinc((f - taps) / 4) for f in -matrix[:, 2] - offset)
    kernels = (kx / kx.sum()).astype(np.float32), (ky / ky.sum()).astype(np.float32)
    dtype = np.float32 if exact else image.dtype
    out = np.empty((size[1], size[0], *image.shape[2:]), dtype)
    ox, oy = int(offset[0]), int(offset[1])
    h, w = image.shape[:2]
    x0, y0 = max(0, -ox), max(0, -oy)
    x1, y1 = min(size[0], w - ox), min(size[1], h - oy)
    if x1 <= x0 or y1 <= y0:
        out[:] = 0
        return out
    if exact and (x0, y0, x1, y1) == (-ox, -oy, w - ox, h - oy):
        # The whole frame lands in the output (a frame onto its canvas box): filtered straight into place.
        cv2.sepFilter2D(image, cv2.CV_32F, *kernels, dst=out[y0:y1, x0:x1], anchor=(3, 3),
                        borderType=cv2.BORDER_REPLICATE)
    else:
        filtered = cv2.sepFilter2D(image, cv2.CV_32F, *kernels, anchor=(3, 3), borderType=cv2.BORDER_REPLICATE)
        if dtype == np.uint8:
            # Lanczos rings past black and white at sharp edges: below zero cut (which the absolute value
            # would turn up), above 255 saturated by the rounding.
            cv2.threshold(filtered, 0, 0, cv2.THRESH_TOZERO, dst=filtered)
            filtered = cv2.convertScaleAbs(filtered)
        out[y0:y1, x0:x1] = filtered[y0 + oy : y1 + oy, x0 + ox : x1 + ox]
    out[:y0], out[y1:], out[y0:y1, :x0], out[y0:y1, x1:] = 0, 0, 0, 0
    if exact:  # saturated, as uint8 would be
        np.clip(out, 0, 255, out=out)
    return out


def _shifted_window(image: np.ndarray, shift: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """out(x, y) = image(x + shift), `size` (w, h), in Lanczos: the window of `image` the kernel reaches,
    shifted by `warp`'s separable path (a frame's region drawn back from a panning or shaking camera's
    canvas: OpenCV's whole warp made `--resample lanczos` cost 41% of a command's frames/s)."""
    h, w = image.shape[:2]
    cx0, cy0 = (max(0, int(np.floor(t)) - 3) for t in shift)
    cx1, cy1 = min(w, int(np.floor(shift[0])) + size[0] + 5), min(h, int(np.floor(shift[1])) + size[1] + 5)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros((size[1], size[0], *image.shape[2:]), image.dtype)
    window = image[cy0:cy1, cx0:cx1]
    forward = np.float64([[1, 0, cx0 - shift[0]], [0, 1, cy0 - shift[1]]])
    return warp(window, forward, size, cv2.INTER_LANCZOS4)


def _shifted_nearest(image: np.ndarray, shift: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """out(x, y) = image(x + shift), `size` (w, h), nearest pixel, zeros outside: OpenCV's nearest warp to the
    pixel (halves round up; half a pixel past the last is the last), as a copy (a panning or shaking camera's
    `seen` under each region: 0.5 ms a region less)."""
    h, w = image.shape[:2]
    out = np.zeros((size[1], size[0], *image.shape[2:]), image.dtype)
    (x0, x1, dx, tie_x), (y0, y1, dy, tie_y) = (_nearest_span(t, n_out, n_in)
                                                for t, n_out, n_in in zip(shift, size, (w, h)))
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = image[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        if tie_x:
            out[y0:y1, x1] = out[y0:y1, x1 - 1]
        if tie_y:
            out[y1, x0 : x1 + tie_x] = out[y1 - 1, x0 : x1 + tie_x]
    return out


def _nearest_span(shift: float, n_out: int, n_in: int) -> tuple[int, int, int, bool]:
    """Along one axis: the output pixels [start, stop) taken from the source at whole offset `offset`, and
    whether the one at `stop` falls half a pixel past the source's last, which OpenCV takes as the last."""
    offset = int(np.floor(shift + 0.5))
    start, stop = max(0, -offset), min(n_out, n_in - offset)
    tie = stop < n_out and stop > start and stop + shift == n_in - 0.5
    return start, stop, offset, tie


def mirror_fill(image: np.ndarray, hole: np.ndarray, seam_px: float = MIRROR_SEAM_PX) -> tuple[np.ndarray, np.ndarray]:
    """Fills each run of `hole` pixels (bool) in a row with the row's seen pixels mirrored across the
    run's two ends, the two mirror images meeting mid-run in a cross-fade `seam_px` wide. Persons are
    upright, so their holes are tall and narrow: the texture on either side (brick, cobbles, a bus)
    goes on into them, where inpainting draws streaks that a detector can read as a person.

    Returns the filled image and the hole pixels neither mirror could fill (the run reaches the
    image's edge and its mirror lands in another hole, or beyond): the caller's fallback.
    """
    hole = np.ascontiguousarray(hole, dtype=bool)
    out, missing = image.copy(), np.zeros(hole.shape, bool)
    band = max(1, MIRROR_BAND_PX // hole.shape[1])
    for y in range(0, hole.shape[0], band):  # rows are filled each on its own: bands give the same pixels
        rows = slice(y, y + band)
        _mirror_fill_rows(image[rows], hole[rows], seam_px, out[rows], missing[rows])
    return out, missing


def _mirror_fill_rows(image: np.ndarray, hole: np.ndarray, seam_px: float, out: np.ndarray,
                      missing: np.ndarray) -> None:
    """`mirror_fill` of some rows, into `out` (a copy of `image`) and `missing` (all False)."""
    h, w = hole.shape
    # The runs of hole pixels, row by row: where each starts and ends (past its last pixel), from the rows'
    # steps in and out of the hole (numpy's running maximum along the rows took most of the time, 100 ms a
    # 720p camera's canvas).
    steps = np.diff(hole.view(np.int8), axis=1, prepend=np.int8(0), append=np.int8(0))
    run_rows, starts = np.nonzero(steps == 1)
    ends = np.nonzero(steps == -1)[1]
    if not len(starts):
        return
    lengths = ends - starts
    # Each hole pixel, in row order: its row, its column, the seen pixels beside its run (-1 and w: none).
    ys = np.repeat(run_rows, lengths)
    lefts = np.repeat(starts - 1, lengths)
    rights = np.repeat(ends, lengths)
    xs = np.arange(len(ys)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + lefts + 1
    from_left, from_right = 2 * lefts - xs + 1, 2 * rights - xs - 1  # x = left + 1 takes left, and so on
    usable_left = (lefts >= 0) & (from_left >= 0)
    usable_right = (rights < w) & (from_right < w)
    row_start = ys * w
    flat_hole = hole.ravel()
    usable_left[usable_left] = ~flat_hole[(row_start + from_left)[usable_left]]
    usable_right[usable_right] = ~flat_hole[(row_start + from_right)[usable_right]]
    to_left = np.where(usable_left, xs - lefts, 2 * w)  # 2w: no mirror that way
    to_right = np.where(usable_right, rights - xs, 2 * w)
    # Weight of the left mirror: 1 nearer the left end, 0 nearer the right, a ramp over the seam.
    weight = np.clip(0.5 + (to_right - to_left) / (2 * seam_px), 0, 1)
    weight = np.where(usable_right, np.where(usable_left, weight, 0.0), 1.0)[:, None].astype(np.float32)
    filled_ok = usable_left | usable_right
    pixels = image.reshape(h * w, -1)
    at = (row_start + xs)[filled_ok]
    weight = weight[filled_ok]
    values = (pixels[(row_start + from_left)[filled_ok].clip(0, h * w - 1)] * weight
              + pixels[(row_start + from_right)[filled_ok].clip(0, h * w - 1)] * (1 - weight))
    out.reshape(h * w, -1)[at] = np.round(values).astype(np.uint8)
    missing.reshape(-1)[(row_start + xs)[~filled_ok]] = True


def _extent(view: View) -> np.ndarray:
    """The (x, y) least (row 0) and greatest (row 1) of the frame's corners on its canvas."""
    return view.scene_extent + view.scene.origin[:2, 2]


def blend_into(out: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> None:
    """out = out*(1-a) + background*a, in place; exactly the background where alpha is 255."""
    weight = alpha.astype(np.float32)
    weight *= 1 / 255
    cv2.blendLinear(background, out, weight, 1 - weight, dst=out)
