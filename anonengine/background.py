"""Per-camera dynamic background: a running average frozen under persons, that never invents a person.

The seed started the background from frame 0, so a person in view then was pasted back as
"background" for as long as they stood there. Here every pixel also records whether it has ever
been seen free of persons. A pixel is learnt the first time it is seen free (copied), then follows
lighting and slow change with learning rate `alpha`. Pixels never seen free are filled from the seen
background around them (inpainting) or a flat grey: never from the frame, which holds the person.

The model lives in scene coordinates: a canvas a quarter of the frame larger on each side, onto which
each frame is placed by the camera's motion since the first (`CameraMotion`: pan, tilt, zoom, roll,
shake, estimated from person-free pixels). A moving camera neither smears nor ghosts it, and a pan
back finds what was learnt. While the camera stands still the frame sits on the canvas at whole-pixel
offsets, so nothing is resampled: the model is exactly the plain running average.
"""

from __future__ import annotations

import cv2
import numpy as np

from anonengine.config import BackgroundConfig

SOLID_GREY = 128
CUT_SAMPLE_STEP = 4
CUT_PIXEL_CHANGE = 40  # grey levels
FILL_REFRESH_FRAMES = 25
CANVAS_MARGIN = 0.25  # of the frame's size, on each side
MOTION_WIDTH = 320  # motion is estimated on a grey copy this wide
MOTION_FEATURES = 200
MIN_TRACKS = 12  # fewer inlier tracks than this: the motion is not known (taken as none)
STILL_PX = 0.2  # motion smaller than this, anywhere in the frame, is noise: the camera stands still
STILL_TRACK_PX = 0.3  # a track shorter than this (on the small copy) stayed put
REDETECT_FRAMES = 10
ZOOM_NOISE_PX = 0.5  # zoom or roll moving the small copy's corners less than this is noise


def fit_similarity(start: np.ndarray, end: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """The similarity (2x3) taking tracks' `start` points to their `end` points on an image of `size`
    (w, h); None when too few agree, or when most stayed put (the camera is still, whatever moves in
    front of it)."""
    if len(start) < MIN_TRACKS or (np.linalg.norm(end - start, axis=-1) < STILL_TRACK_PX).mean() >= 0.5:
        return None
    matrix, inliers = cv2.estimateAffinePartial2D(start, end, method=cv2.RANSAC, ransacReprojThreshold=0.5,
                                                  maxIters=500, confidence=0.99)
    if matrix is None or inliers.sum() < MIN_TRACKS:
        return None
    # A zoom or roll too small to tell from the trackers' noise is taken as none: chained over a long pan,
    # such noise would turn and scale the whole model. Then the shift is the inliers' median.
    half = np.float32(size) / 2
    if np.abs((matrix[:, :2] - np.eye(2)) @ half).max() < ZOOM_NOISE_PX:
        agreeing = inliers.ravel() == 1
        matrix = np.float64([[1, 0, 0], [0, 1, 0]])
        matrix[:, 2] = np.median((end - start).reshape(-1, 2)[agreeing], axis=0)
    return matrix


class CameraMotion:
    """The camera's motion from one frame to the next: a similarity (shift, zoom, roll) fitted with
    RANSAC to Lucas-Kanade tracks of corners on person-free pixels, on a small grey copy. Corners are
    found again every REDETECT_FRAMES frames, or when too few are left; in between they are followed."""

    def __init__(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._corners: np.ndarray | None = None  # on the previous copy's person-free pixels
        self._followed = 0

    def reset(self) -> None:
        self._previous = None
        self._corners = None

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
        matrix = fit_similarity(corners[found], tracked[found], size)
        if matrix is None:
            return None
        matrix[:, 2] /= scale  # the shift at full size (zoom and roll do not depend on it)
        corners_moved = cv2.transform(np.float32([[[0, 0], [w, 0], [0, h], [w, h]]]), matrix)[0]
        if np.abs(corners_moved - np.float32([[0, 0], [w, 0], [0, h], [w, h]])).max() < STILL_PX:
            return None
        return matrix


class BackgroundModel:
    def __init__(self, cfg: BackgroundConfig) -> None:
        self.cfg = cfg
        self.motion = CameraMotion() if cfg.follow_camera else None
        self._mean: np.ndarray | None = None  # float32, canvas-sized HxWx3, scene coordinates
        self._seen: np.ndarray | None = None  # uint8, 255 = seen free of persons at least once
        self._fill: np.ndarray | None = None  # uint8 HxWx3 like _mean, valid on every pixel still unseen
        self._frame_shape: tuple[int, ...] | None = None
        self._to_canvas = np.eye(3)  # frame pixel -> canvas pixel
        self._frames = 0
        self._fill_frame = 0

    @property
    def seen(self) -> np.ndarray | None:
        """Which of the current frame's pixels have been seen free of persons (255)."""
        return None if self._seen is None else self._to_frame(self._seen, cv2.INTER_NEAREST)

    def reset(self) -> None:
        self._mean = None
        self._seen = None
        self._fill = None
        if self.motion is not None:
            self.motion.reset()

    def update(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Learns from the pixels of `frame` outside `person_mask` (uint8, 255 = person).

        Returns True when the frame was a scene cut: the model was reset and learns the new scene.
        """
        cut = False
        self._frames += 1
        moved = self.motion.estimate(frame, person_mask) if self.motion is not None else None
        if self._mean is None or self._frame_shape != frame.shape:
            self._start(frame.shape)
        else:
            if moved is not None:
                self._to_canvas = self._to_canvas @ np.linalg.inv(np.vstack([moved, [0, 0, 1]]))
                self._keep_on_canvas()
            if self.cfg.cut_threshold > 0 and self._is_cut(frame, person_mask):
                self._seen[:] = 0  # what was learnt shows another scene: nothing of it may fill this one
                self._fill = None
                cut = True
        box, to_box = self._footprint()
        roi = slice(box[1], box[3]), slice(box[0], box[2])
        free = cv2.bitwise_not(person_mask)
        if to_box is None:  # whole-pixel placement: the frame's own pixels, resampled not at all
            image = frame
        else:
            size = (box[2] - box[0], box[3] - box[1])
            image = cv2.warpAffine(frame, to_box, size, flags=cv2.INTER_LINEAR)
            # Outside the frame counts as not seen now, and the border blends with nothing: shrink by one.
            free = cv2.warpAffine(free, to_box, size, flags=cv2.INTER_NEAREST, borderValue=0)
            free = cv2.erode(free, np.ones((3, 3), np.uint8))
        mean, seen = self._mean[roi], self._seen[roi]
        cv2.accumulateWeighted(image, mean, self.cfg.alpha, mask=cv2.bitwise_and(free, seen))
        first_seen = cv2.bitwise_and(free, cv2.bitwise_not(seen))
        x, y, w, h = cv2.boundingRect(first_seen)  # newly uncovered pixels lie around persons: work there
        if w:
            part = slice(y, y + h), slice(x, x + w)
            cv2.accumulateWeighted(image[part], mean[part], 1.0, mask=first_seen[part])  # weight 1: a copy
            cv2.bitwise_or(seen[part], first_seen[part], dst=seen[part])
        return cut

    def _start(self, shape: tuple[int, ...]) -> None:
        h, w = shape[:2]
        margin_x, margin_y = (round(w * CANVAS_MARGIN), round(h * CANVAS_MARGIN)) if self.motion else (0, 0)
        self._mean = np.zeros((h + 2 * margin_y, w + 2 * margin_x, 3), np.float32)
        self._seen = np.zeros(self._mean.shape[:2], np.uint8)
        self._fill = None
        self._frame_shape = shape
        self._to_canvas = np.array([[1.0, 0, margin_x], [0, 1.0, margin_y], [0, 0, 1]])

    def _placement(self) -> tuple[int, int] | None:
        """The frame's offset on the canvas when it sits there at whole pixels, unscaled; else None."""
        m = self._to_canvas
        if np.allclose(m[:2, :2], np.eye(2), atol=1e-9) and np.allclose(m[:2, 2], np.round(m[:2, 2]), atol=1e-6):
            return round(float(m[0, 2])), round(float(m[1, 2]))
        return None

    def _footprint(self) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
        """The canvas box (x0, y0, x1, y1) the frame covers, and the 2x3 matrix from the frame to it
        (None: a whole-pixel offset, where the box is the frame's own size)."""
        h, w = self._frame_shape[:2]
        offset = self._placement()
        if offset is not None:
            return (offset[0], offset[1], offset[0] + w, offset[1] + h), None
        (left, top), (right, bottom) = self._extent()
        ch, cw = self._seen.shape
        x0, y0 = np.clip(np.floor([left, top]).astype(int), 0, [cw, ch])
        x1, y1 = np.clip(np.ceil([right, bottom]).astype(int) + 1, 0, [cw, ch])
        to_box = self._to_canvas[:2].copy()
        to_box[:, 2] -= (x0, y0)
        return (int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))), to_box

    def _extent(self) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) least and greatest of the frame's corners on the canvas."""
        h, w = self._frame_shape[:2]
        corners = cv2.transform(np.float64([[[0, 0], [w, 0], [0, h], [w, h]]]), self._to_canvas[:2])[0]
        return corners.min(axis=0), corners.max(axis=0)

    def _keep_on_canvas(self) -> None:
        """After a long pan the frame nears the canvas' edge: the canvas moves with it, by whole pixels,
        forgetting the scene farthest behind."""
        ch, cw = self._seen.shape
        (x0, y0), (x1, y1) = self._extent()
        if x0 >= 0 and y0 >= 0 and x1 <= cw and y1 <= ch:
            return
        # Centre the frame's footprint again.
        dx, dy = round((cw - (x1 - x0)) / 2 - x0), round((ch - (y1 - y0)) / 2 - y0)
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        self._mean = cv2.warpAffine(self._mean, shift, (cw, ch), flags=cv2.INTER_NEAREST)
        self._seen = cv2.warpAffine(self._seen, shift, (cw, ch), flags=cv2.INTER_NEAREST, borderValue=0)
        if self._fill is not None:
            self._fill = cv2.warpAffine(self._fill, shift, (cw, ch), flags=cv2.INTER_NEAREST)
        self._to_canvas = np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1]]) @ self._to_canvas

    def _to_frame(self, canvas_image: np.ndarray, interpolation: int, box=None, step: int = 1) -> np.ndarray:
        """The part of a canvas-sized image under the frame's `box` (x0, y0, x1, y1; default all of it),
        every `step`-th pixel."""
        h, w = self._frame_shape[:2]
        x0, y0, x1, y1 = box or (0, 0, w, h)
        offset = self._placement()
        if offset is not None:
            ox, oy = offset
            return canvas_image[oy + y0 : oy + y1 : step, ox + x0 : ox + x1 : step]
        # Canvas position of each output pixel (x, y): to_canvas @ (x0 + x * step, y0 + y * step).
        m = self._to_canvas[:2].copy()
        m[:, 2] += m[:, :2] @ (x0, y0)
        m[:, :2] *= step
        size = (len(range(x0, x1, step)), len(range(y0, y1, step)))
        return cv2.warpAffine(canvas_image, m, size, flags=interpolation | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _is_cut(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Most of the seen, person-free background changed at once (sampled on a grid, for speed)."""
        step = CUT_SAMPLE_STEP
        seen = self._to_frame(self._seen, cv2.INTER_NEAREST, step=step)
        usable = cv2.bitwise_and(seen, cv2.bitwise_not(person_mask[::step, ::step]))
        samples = cv2.countNonZero(usable)
        if samples < 100:
            return False
        mean = self._to_frame(self._mean, cv2.INTER_NEAREST, step=step)
        diff = cv2.absdiff(np.ascontiguousarray(frame[::step, ::step]), cv2.convertScaleAbs(mean))
        channels = cv2.split(diff)
        largest = channels[0]
        for channel in channels[1:]:
            largest = cv2.max(largest, channel)
        changed = cv2.compare(largest, CUT_PIXEL_CHANGE, cv2.CMP_GT)
        return cv2.countNonZero(cv2.bitwise_and(changed, usable)) > self.cfg.cut_threshold * samples

    def render(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The background (uint8 BGR) in `box` (x0, y0, x1, y1; default the whole frame).

        Pixels never seen free of persons come from the fill, never from a frame.
        """
        if self._mean is None:
            raise RuntimeError("BackgroundModel.render() before the first update()")
        image = cv2.convertScaleAbs(self._to_frame(self._mean, cv2.INTER_LINEAR, box))
        unseen = cv2.compare(self._to_frame(self._seen, cv2.INTER_NEAREST, box), 0, cv2.CMP_EQ)
        if cv2.countNonZero(unseen):
            cv2.copyTo(self._to_frame(self._current_fill(), cv2.INTER_LINEAR, box), unseen, image)
        return image

    def _current_fill(self) -> np.ndarray:
        # Unseen pixels only ever become seen (until a reset), so a fill stays valid where it is used;
        # it is redone now and then to follow what was learnt around the holes since.
        if self._fill is None or self._frames - self._fill_frame >= FILL_REFRESH_FRAMES:
            self._fill = self._make_fill()
            # Grey for want of anything seen is redone next frame, not kept for the refresh period.
            self._fill_frame = self._frames if cv2.countNonZero(self._seen) else self._frames - FILL_REFRESH_FRAMES
        return self._fill

    def _make_fill(self) -> np.ndarray:
        """A canvas-sized fill, made where the frame is now (the rest of the canvas is not shown)."""
        fill = np.full(self._mean.shape, SOLID_GREY, np.uint8)
        if self.cfg.fill == "solid" or not cv2.countNonZero(self._seen):
            return fill
        (x0, y0, x1, y1), _ = self._footprint()
        mean, seen = cv2.convertScaleAbs(self._mean[y0:y1, x0:x1]), self._seen[y0:y1, x0:x1]
        # Inpainting is costly at full size and the fill is smooth anyway: do it small, then upscale.
        h, w = seen.shape
        scale = min(1.0, self.cfg.fill_scale / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(mean, size, interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(cv2.bitwise_not(seen), size, interpolation=cv2.INTER_NEAREST)
        # The hole is every unseen pixel: unseen pixels hold no data, whatever the frame showed there.
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        filled = cv2.inpaint(small, small_hole, 3, cv2.INPAINT_TELEA)
        fill[y0:y1, x0:x1] = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
        return fill
