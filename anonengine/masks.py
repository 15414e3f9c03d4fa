"""Person masks: from detections to a hard mask (what is hidden) and a soft alpha (how it blends).

Sizes are shares of the frame (or box) so that the same settings hold at 360p and at 4K.
The soft edge is added *outside* the hard mask: inside it alpha is exactly 1, so feathering can never
let a person's pixels show through at the border, as a blur of the hard mask would.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from anonengine.config import MaskConfig
from anonengine.detections import Detections


def frame_diagonal(shape: tuple[int, int]) -> float:
    return math.hypot(shape[0], shape[1])


def dilated_boxes(boxes: np.ndarray, shape: tuple[int, int], cfg: MaskConfig) -> np.ndarray:
    """Boxes grown by `box_margin` of their size on each side (at least `min_margin_px`), as int xyxy."""
    h, w = shape
    if len(boxes) == 0:
        return np.zeros((0, 4), np.int32)
    size = boxes[:, 2:] - boxes[:, :2]
    pad = np.maximum(size * cfg.box_margin, cfg.min_margin_px)
    grown = np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1)
    snap_x, snap_y = cfg.edge_snap * w, cfg.edge_snap * h
    grown[grown[:, 0] <= snap_x, 0] = 0
    grown[grown[:, 1] <= snap_y, 1] = 0
    grown[grown[:, 2] >= w - snap_x, 2] = w
    grown[grown[:, 3] >= h - snap_y, 3] = h
    grown = np.round(grown).astype(np.int32)
    grown[:, [0, 2]] = grown[:, [0, 2]].clip(0, w)
    grown[:, [1, 3]] = grown[:, [1, 3]].clip(0, h)
    return grown


def box_mask(boxes: np.ndarray, shape: tuple[int, int], cfg: MaskConfig) -> np.ndarray:
    """uint8 mask (255 = person) of the dilated boxes."""
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in dilated_boxes(boxes, shape, cfg):
        mask[y0:y1, x0:x1] = 255
    return mask


def inflate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Grows a uint8 mask by `radius_px` with a Euclidean distance transform (round, not boxy, growth)."""
    if radius_px <= 0 or not mask.any():
        return mask.copy()
    dist = cv2.distanceTransform(cv2.bitwise_not(mask), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(dist <= radius_px, 255, 0).astype(np.uint8)


def seg_mask(detections: Detections, cfg: MaskConfig) -> np.ndarray:
    """uint8 mask of the persons' outlines inflated by `seg_inflate` of the frame diagonal."""
    shape = detections.frame_shape
    mask = np.zeros(shape, np.uint8)
    if detections.masks is not None and len(detections):
        mask[detections.masks.any(axis=0)] = 255
    radius = max(cfg.seg_inflate * frame_diagonal(shape), cfg.min_margin_px)
    return inflate(mask, radius)


def person_mask(detections: Detections, method: str, cfg: MaskConfig) -> np.ndarray:
    """The hard mask to hide for one frame.

    `seg` hides the inflated outlines, plus the dilated box of any person that has no outline (a box
    without mask pixels, say from the pose model): a person one model missed is still hidden.
    """
    shape = detections.frame_shape
    if method == "bbox" or detections.masks is None:
        return box_mask(detections.boxes, shape, cfg)
    mask = seg_mask(detections, cfg)
    without_outline = ~detections.masks.reshape(len(detections), -1).any(axis=1)
    if without_outline.any():
        mask |= box_mask(detections.boxes[without_outline], shape, cfg)
    return mask


def soft_alpha(mask: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """uint8 alpha: 255 on the hard mask, falling smoothly to 0 over `feather` outside it."""
    width = cfg.feather * frame_diagonal(mask.shape)
    if width < 1 or not mask.any():
        return mask.copy()
    k = 2 * int(math.ceil(width / 2)) + 1
    sigma = width / 2.5
    # Only around the mask: the dilation and blur reach k/2 + 4 sigma at most, so the result equals
    # the full-frame computation at a fraction of its cost.
    pad = k // 2 + int(math.ceil(4 * sigma)) + 1
    x, y, w, h = cv2.boundingRect(mask)
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(mask.shape[1], x + w + pad), min(mask.shape[0], y + h + pad)
    roi = mask[y0:y1, x0:x1]
    grown = cv2.dilate(roi, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    soft = np.zeros_like(mask)
    soft[y0:y1, x0:x1] = np.maximum(cv2.GaussianBlur(grown, (0, 0), sigmaX=sigma), roi)
    return soft


def zones_mask(zones: list, shape: tuple[int, int]) -> np.ndarray | None:
    """uint8 mask of privacy-zone polygons given in shares of the frame size; None without zones."""
    if not zones:
        return None
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    polygons = [np.round(np.array(z, np.float64) * (w, h)).astype(np.int32) for z in zones]
    cv2.fillPoly(mask, polygons, 255)
    return mask
