"""Per-camera dynamic background: a running average frozen under persons, that never invents a person.

The seed started the background from frame 0, so a person in view then was pasted back as
"background" for as long as they stood there. Here every pixel also records whether it has ever
been seen free of persons. A pixel is learnt the first time it is seen free (copied), then follows
lighting and slow change with learning rate `alpha`. Pixels never seen free are filled from the seen
background around them (inpainting) or a flat grey: never from the frame, which holds the person.
"""

from __future__ import annotations

import cv2
import numpy as np

from anonengine.config import BackgroundConfig

SOLID_GREY = 128
CUT_SAMPLE_STEP = 4
CUT_PIXEL_CHANGE = 40  # grey levels
FILL_REFRESH_FRAMES = 25


class BackgroundModel:
    def __init__(self, cfg: BackgroundConfig) -> None:
        self.cfg = cfg
        self._mean: np.ndarray | None = None  # float32 HxWx3
        self._seen: np.ndarray | None = None  # uint8 HxW, 255 = seen free of persons at least once
        self._fill: np.ndarray | None = None  # uint8 HxWx3, valid on every pixel still unseen
        self._frames = 0
        self._fill_frame = 0

    @property
    def seen(self) -> np.ndarray | None:
        return self._seen

    def reset(self) -> None:
        self._mean = None
        self._seen = None
        self._fill = None

    def update(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Learns from the pixels of `frame` outside `person_mask` (uint8, 255 = person).

        Returns True when the frame was a scene cut: the model was reset and learns the new scene.
        """
        cut = False
        self._frames += 1
        if self._mean is None or self._mean.shape != frame.shape:
            self._mean = np.zeros(frame.shape, np.float32)
            self._seen = np.zeros(frame.shape[:2], np.uint8)
            self._fill = None
        elif self.cfg.cut_threshold > 0 and self._is_cut(frame, person_mask):
            self._seen[:] = 0  # what was learnt shows another scene: nothing of it may fill this one
            self._fill = None
            cut = True
        free = cv2.bitwise_not(person_mask)
        cv2.accumulateWeighted(frame, self._mean, self.cfg.alpha, mask=cv2.bitwise_and(free, self._seen))
        first_seen = cv2.bitwise_and(free, cv2.bitwise_not(self._seen))
        x, y, w, h = cv2.boundingRect(first_seen)  # newly uncovered pixels lie around persons: work there
        if w:
            roi = slice(y, y + h), slice(x, x + w)
            cv2.accumulateWeighted(frame[roi], self._mean[roi], 1.0, mask=first_seen[roi])  # weight 1: a copy
            cv2.bitwise_or(self._seen[roi], first_seen[roi], dst=self._seen[roi])
        return cut

    def _is_cut(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Most of the seen, person-free background changed at once (sampled on a grid, for speed)."""
        step = CUT_SAMPLE_STEP
        usable = cv2.bitwise_and(self._seen[::step, ::step], cv2.bitwise_not(person_mask[::step, ::step]))
        samples = cv2.countNonZero(usable)
        if samples < 100:
            return False
        diff = cv2.absdiff(frame[::step, ::step], cv2.convertScaleAbs(self._mean[::step, ::step]))
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
        x0, y0, x1, y1 = box or (0, 0, self._mean.shape[1], self._mean.shape[0])
        image = cv2.convertScaleAbs(self._mean[y0:y1, x0:x1])
        unseen = cv2.compare(self._seen[y0:y1, x0:x1], 0, cv2.CMP_EQ)
        if cv2.countNonZero(unseen):
            cv2.copyTo(self._current_fill()[y0:y1, x0:x1], unseen, image)
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
        if self.cfg.fill == "solid" or not cv2.countNonZero(self._seen):
            return np.full(self._mean.shape, SOLID_GREY, np.uint8)
        # Inpainting is costly at full size and the fill is smooth anyway: do it small, then upscale.
        h, w = self._seen.shape
        scale = min(1.0, self.cfg.fill_scale / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(cv2.convertScaleAbs(self._mean), size, interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(cv2.bitwise_not(self._seen), size, interpolation=cv2.INTER_NEAREST)
        # The hole is every unseen pixel: unseen pixels hold no data, whatever the frame showed there.
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        filled = cv2.inpaint(small, small_hole, 3, cv2.INPAINT_TELEA)
        return cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
