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


class BackgroundModel:
    def __init__(self, cfg: BackgroundConfig) -> None:
        self.cfg = cfg
        self._mean: np.ndarray | None = None  # float32 HxWx3
        self._seen: np.ndarray | None = None  # uint8 HxW, 255 = seen free of persons at least once

    @property
    def seen(self) -> np.ndarray | None:
        return self._seen

    def reset(self) -> None:
        self._mean = None
        self._seen = None

    def update(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Learns from the pixels of `frame` outside `person_mask` (uint8, 255 = person).

        Returns True when the frame was a scene cut: the model was reset and learns the new scene.
        """
        cut = False
        if self._mean is None or self._mean.shape != frame.shape:
            self._mean = np.zeros(frame.shape, np.float32)
            self._seen = np.zeros(frame.shape[:2], np.uint8)
        elif self.cfg.cut_threshold > 0 and self._is_cut(frame, person_mask):
            self._seen[:] = 0  # what was learnt shows another scene: nothing of it may fill this one
            cut = True
        free = cv2.bitwise_not(person_mask)
        first_seen = cv2.bitwise_and(free, cv2.bitwise_not(self._seen))
        cv2.accumulateWeighted(frame, self._mean, self.cfg.alpha, mask=cv2.bitwise_and(free, self._seen))
        if first_seen.any():
            np.copyto(self._mean, frame, where=first_seen[..., None].astype(bool))
            cv2.bitwise_or(self._seen, first_seen, dst=self._seen)
        return cut

    def _is_cut(self, frame: np.ndarray, person_mask: np.ndarray) -> bool:
        """Most of the seen, person-free background changed at once (sampled on a grid, for speed)."""
        step = CUT_SAMPLE_STEP
        usable = (self._seen[::step, ::step] > 0) & (person_mask[::step, ::step] == 0)
        if usable.sum() < 100:
            return False
        diff = np.abs(frame[::step, ::step].astype(np.int16) - self._mean[::step, ::step].astype(np.int16))
        changed = diff.max(axis=2)[usable] > CUT_PIXEL_CHANGE
        return changed.mean() > self.cfg.cut_threshold

    def render(self, need: np.ndarray | None = None) -> np.ndarray:
        """The background as uint8 BGR; `need` (uint8 mask) limits where unseen pixels must be filled."""
        if self._mean is None:
            raise RuntimeError("BackgroundModel.render() before the first update()")
        image = cv2.convertScaleAbs(self._mean)
        unseen = cv2.bitwise_not(self._seen)
        if need is not None:
            unseen = cv2.bitwise_and(unseen, need)
        if unseen.any():
            self._fill(image, unseen)
        return image

    def _fill(self, image: np.ndarray, unseen: np.ndarray) -> None:
        if self.cfg.fill == "solid" or not self._seen.any():
            image[unseen > 0] = SOLID_GREY
            return
        # Inpainting is costly at full size and the fill is smooth anyway: do it small, then upscale.
        h, w = unseen.shape
        scale = min(1.0, self.cfg.fill_scale / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(cv2.bitwise_not(self._seen), size, interpolation=cv2.INTER_NEAREST)
        # The hole is every unseen pixel (not only the needed ones): unseen pixels hold no data.
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        filled = cv2.inpaint(small, small_hole, 3, cv2.INPAINT_TELEA)
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
        np.copyto(image, filled, where=unseen[..., None].astype(bool))
