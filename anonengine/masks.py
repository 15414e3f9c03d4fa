"""Person masks: from detections to a hard mask (what is hidden) and a soft alpha (how it blends).

Sizes are shares of the frame (or box) so that the same settings hold at 360p and at 4K.
The soft edge is added *outside* the hard mask: inside it alpha is exactly 1, so feathering can never
let a person's pixels show through at the border, as a blur of the hard mask would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from anonengine.config import MaskConfig
from anonengine.detections import Detections

FEATHER_MAX_DOWNSCALE = 4
# What moves beside a hidden person is hidden within this share of their height around their box
# (`grow_into_motion`): a box that ends at the hips is as tall as the legs below it. With `mask.motion: all`, a
# moving patch of this many cells or more anywhere.
MOTION_REACH = 1.0
MOTION_MIN_CELLS = 3


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


@dataclass
class Region:
    """A rectangle of the frame to anonymize and its soft alpha (uint8, 255 = fully hidden)."""

    x0: int
    y0: int
    x1: int
    y1: int
    alpha: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def grow_into_motion(mask: np.ndarray, moving: np.ndarray, cell: int, boxes: np.ndarray, cfg: MaskConfig
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`mask` (uint8, 255 = hidden) and what moves that it does not explain (`mask.motion`), as a new mask; and the
    boxes (x0, y0, x1, y1, float32) of the patches added, for the frame's metadata.

    `moving`: which cells of the frame (rows x columns, bool, each `cell` px square) differ from the background
    model (`BackgroundModel.moving`); `boxes`: the persons the mask hides. A patch of moving cells joined to a
    hidden person (the leg of someone behind them the detector lost, a hand past their box) is hidden as far as
    MOTION_REACH of that person's height around their box; with `all`, every patch of MOTION_MIN_CELLS or more
    anywhere (someone the detector missed altogether; a car too). Grown by a cell, for the edge cells a moving
    thing covers only in part."""
    none = np.zeros((0, 4), np.float32)
    rows, cols = moving.shape
    h, w = mask.shape
    padded = mask
    if (rows * cell, cols * cell) != (h, w):
        padded = cv2.copyMakeBorder(mask, 0, rows * cell - h, 0, cols * cell - w, cv2.BORDER_CONSTANT, value=0)
    coverage = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA)
    hidden = coverage > 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(moving.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask, none
    near = cv2.dilate(hidden.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    joined = np.zeros(count, bool)
    joined[labels[near & moving]] = True
    joined[0] = False
    grown = np.zeros((rows, cols), np.uint8)
    if joined.any() and len(boxes):
        reach = np.zeros((rows, cols), bool)
        heights = boxes[:, 3] - boxes[:, 1]
        for (x0, y0, x1, y1), height in zip(boxes, heights):
            pad = MOTION_REACH * height
            reach[max(0, int((y0 - pad) // cell)) : int(np.ceil((y1 + pad) / cell)),
                  max(0, int((x0 - pad) // cell)) : int(np.ceil((x1 + pad) / cell))] = True
        grown[joined[labels] & reach] = 255
    if cfg.motion == "all":
        large = stats[:, cv2.CC_STAT_AREA] >= MOTION_MIN_CELLS
        large[0] = False
        grown[large[labels]] = 255
    # A hidden person moving changes the cells of their mask and those their outline crosses: grown from, a halo
    # of a cell or two around everyone who moves (a `seg` mask, made to follow them, grew blocky). What lies wholly
    # outside the mask is added, and its growth by a cell covers where it crosses into the mask.
    grown[coverage > 0] = 0
    if not grown.any():
        return mask, none
    grown = cv2.dilate(grown, np.ones((3, 3), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    patches = stats[1:, :4].copy()  # in cells: x, y, width, height
    patches[:, 2:] += patches[:, :2]  # x0, y0, x1, y1
    # Drawn into the mask where it grew only, the patches' span (a fifth of the time of the whole frame's cells).
    (c0, r0), (c1, r1) = patches[:, :2].min(axis=0), patches[:, 2:].max(axis=0)
    out = mask.copy()
    part = out[r0 * cell : r1 * cell, c0 * cell : c1 * cell]
    pixels = cv2.resize(grown[r0:r1, c0:c1], ((c1 - c0) * cell, (r1 - r0) * cell), interpolation=cv2.INTER_NEAREST)
    cv2.bitwise_or(part, pixels[: part.shape[0], : part.shape[1]], dst=part)
    return out, np.minimum(patches * cell, [w, h, w, h]).astype(np.float32)


def soft_regions(mask: np.ndarray, cfg: MaskConfig) -> list[Region]:
    """Disjoint rectangles covering every hidden pixel and its soft edge, each with its alpha.

    Alpha is 255 on the hard mask and falls smoothly to 0 over `feather` outside it. The soft edge is
    smooth, so it is computed at reduced resolution (the hard mask is kept exact), and only these
    rectangles are ever touched: persons spread over a frame cost their own area, not the frame's.
    """
    if not cv2.countNonZero(mask):
        return []
    h, w = mask.shape
    width = cfg.feather * frame_diagonal(mask.shape)
    # Work at 1/scale of the size, keeping at least ~3 px of soft edge there.
    scale = max(1, min(FEATHER_MAX_DOWNSCALE, int(width // 3)))
    small_size = (math.ceil(w / scale), math.ceil(h / scale))
    padded = mask
    if small_size[0] * scale != w or small_size[1] * scale != h:
        padded = cv2.copyMakeBorder(mask, 0, small_size[1] * scale - h, 0, small_size[0] * scale - w,
                                    cv2.BORDER_CONSTANT, value=0)
    # A block holding any hidden pixel stays > 0 (area averaging), so every hidden pixel is in a region.
    coverage = cv2.resize(padded, small_size, interpolation=cv2.INTER_AREA) if scale > 1 else padded
    soft = coverage
    if width >= 1:
        small_width = width / scale
        k = 2 * math.ceil(small_width / 2) + 1
        grown = cv2.dilate(coverage, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        soft = cv2.max(cv2.GaussianBlur(grown, (0, 0), sigmaX=small_width / 2.5), coverage)
    count, _, stats, _ = cv2.connectedComponentsWithStats(soft, connectivity=8)
    # One small pixel more on each side, so the upsampled edge ends at ~0 inside the rectangle.
    rects = [(sx - 1, sy - 1, sx + sw + 1, sy + sh + 1) for sx, sy, sw, sh, _ in stats[1:count]]
    regions = []
    for sx0, sy0, sx1, sy1 in merge_overlapping(rects):
        sx0, sy0 = max(0, sx0), max(0, sy0)
        sx1, sy1 = min(small_size[0], sx1), min(small_size[1], sy1)
        x0, y0, x1, y1 = sx0 * scale, sy0 * scale, min(w, sx1 * scale), min(h, sy1 * scale)
        alpha = soft[sy0:sy1, sx0:sx1]
        if scale > 1:
            alpha = cv2.resize(alpha, ((sx1 - sx0) * scale, (sy1 - sy0) * scale), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.max(alpha[: y1 - y0, : x1 - x0], mask[y0:y1, x0:x1])  # exactly 255 on the hard mask
        regions.append(Region(x0, y0, x1, y1, alpha))
    return regions


def merge_overlapping(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Unions of the (x0, y0, x1, y1) rectangles that overlap, until none do (so no pixel is blended twice)."""
    merged = list(rects)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    merged[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def soft_alpha(mask: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """The regions' alpha as one full-frame uint8 image (for inspection and tests)."""
    alpha = np.zeros_like(mask)
    for region in soft_regions(mask, cfg):
        alpha[region.slices] = region.alpha
    return alpha


def zones_mask(zones: list, shape: tuple[int, int]) -> np.ndarray | None:
    """uint8 mask of privacy-zone polygons given in shares of the frame size; None without zones."""
    if not zones:
        return None
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    polygons = [np.round(np.array(z, np.float64) * (w, h)).astype(np.int32) for z in zones]
    cv2.fillPoly(mask, polygons, 255)
    return mask
