"""Persons found in one frame: the one type every stage passes on.

Ultralytics results enter the library only through `Detections.from_ultralytics`, so the rest of the
code never depends on the shape of Ultralytics' result objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_KEYPOINTS = 17

# COCO-17 keypoint pairs (0-based) that form the skeleton, as in Ultralytics' plotting.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


def turned_back_points(x: np.ndarray, y: np.ndarray, degrees: int, shape: tuple[int, int]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) of a picture turned clockwise by `degrees` (90, 180 or 270), in the picture as it is, whose
    shape is `shape` (h, w)."""
    h, w = shape
    if degrees == 90:  # the picture turned clockwise: its (x, y) was (h - y, x)
        return y, h - x
    if degrees == 270:
        return w - y, x
    return w - x, h - y


def turned_back_boxes(boxes: np.ndarray, degrees: int, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (N, 4: x0, y0, x1, y1) found in a picture turned clockwise by `degrees`, in the picture as it is, whose
    shape is `shape` (h, w)."""
    x0, y0 = turned_back_points(boxes[:, 0], boxes[:, 1], degrees, shape)
    x1, y1 = turned_back_points(boxes[:, 2], boxes[:, 3], degrees, shape)
    return np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)],
                    axis=1).astype(np.float32)


@dataclass(frozen=True)
class Detections:
    """Persons in one frame, in that frame's pixel coordinates.

    boxes: (N, 4) float32 xyxy; scores: (N,) float32; keypoints: (N, 17, 3) float32 (x, y, conf);
    masks: (N, H, W) bool at frame size, or None when the method has no outlines.
    """

    frame_shape: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray | None = None
    detected: bool = True  # False for a frame the detector did not look at (detector.stride)

    def __post_init__(self) -> None:
        n = len(self.boxes)
        h, w = self.frame_shape
        _expect(self.boxes, "boxes", (n, 4), np.float32)
        _expect(self.scores, "scores", (n,), np.float32)
        _expect(self.keypoints, "keypoints", (n, NUM_KEYPOINTS, 3), np.float32)
        if self.masks is not None:
            _expect(self.masks, "masks", (n, h, w), np.bool_)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, frame_shape: tuple[int, int], with_masks: bool = False, detected: bool = True) -> Detections:
        h, w = frame_shape
        return cls(
            frame_shape=(h, w),
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            keypoints=np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
            masks=np.zeros((0, h, w), bool) if with_masks else None,
            detected=detected,
        )

    @classmethod
    def undetected(cls, frame_shape: tuple[int, int]) -> Detections:
        """A frame between detections: nothing is known of it, which is not the same as nobody there."""
        return cls.empty(frame_shape, detected=False)

    @classmethod
    def from_ultralytics(cls, result, keypoints_from=None) -> Detections:
        """Builds Detections from one Ultralytics `Results` (person class only).

        `keypoints_from`, another frame's `Detections` from a pose model, gives keypoints to a
        segmentation or detection result by box overlap; unmatched persons get zero-confidence
        keypoints (nothing drawn, still masked).
        """
        h, w = (int(v) for v in result.orig_shape)
        boxes_obj = result.boxes
        if boxes_obj is None or len(boxes_obj) == 0:
            return cls.empty((h, w), with_masks=result.masks is not None)
        cls_ids = boxes_obj.cls.cpu().numpy().astype(int)
        keep = cls_ids == 0
        boxes = boxes_obj.xyxy.cpu().numpy().astype(np.float32)[keep]
        scores = boxes_obj.conf.cpu().numpy().astype(np.float32)[keep]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        if result.keypoints is not None and result.keypoints.data.shape[-1] == 3:
            keypoints = result.keypoints.data.cpu().numpy().astype(np.float32)[keep]
        elif keypoints_from is not None:
            keypoints = keypoints_from.keypoints_for(boxes)
        else:
            keypoints = np.zeros((len(boxes), NUM_KEYPOINTS, 3), np.float32)
        masks = None
        if result.masks is not None:
            masks = _masks_at_frame_size(result.masks.data.cpu().numpy()[keep], (h, w))
        return cls((h, w), boxes, scores, keypoints, masks)

    def with_persons(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray) -> Detections:
        """These persons and the given ones; the added ones have no outline (hidden by their box)."""
        k = len(boxes)
        masks = self.masks
        if masks is not None:
            masks = np.concatenate([masks, np.zeros((k, *self.frame_shape), bool)])
        return Detections(
            frame_shape=self.frame_shape,
            boxes=np.concatenate([self.boxes, boxes.astype(np.float32)]),
            scores=np.concatenate([self.scores, scores.astype(np.float32)]),
            keypoints=np.concatenate([self.keypoints, keypoints.astype(np.float32)]).reshape(-1, NUM_KEYPOINTS, 3),
            masks=masks,
            detected=self.detected,
        )

    def turned_back(self, degrees: int) -> Detections:
        """These persons, found in the picture turned clockwise by `degrees` (90, 180 or 270), in the picture as
        it is (its shape `frame_shape` turned back)."""
        turned_h, turned_w = self.frame_shape
        shape = (turned_w, turned_h) if degrees in (90, 270) else (turned_h, turned_w)
        keypoints = self.keypoints.copy()
        keypoints[..., 0], keypoints[..., 1] = turned_back_points(self.keypoints[..., 0], self.keypoints[..., 1],
                                                                  degrees, shape)
        masks = None if self.masks is None else np.ascontiguousarray(
            np.rot90(self.masks, {90: 1, 180: 2, 270: -1}[degrees], axes=(1, 2)))
        return Detections(shape, turned_back_boxes(self.boxes, degrees, shape), self.scores, keypoints, masks,
                          self.detected)

    def confident(self, score: float) -> Detections:
        """Those of these persons scored `score` or more."""
        keep = self.scores >= score
        return Detections(self.frame_shape, self.boxes[keep], self.scores[keep], self.keypoints[keep],
                          None if self.masks is None else self.masks[keep], self.detected)

    def adding(self, other: Detections, same_iou: float = 0.7) -> Detections:
        """These persons and those of `other` (the same picture looked at again, or by another model) that none
        of these is, as box-only persons: a box overlapping one of these by `same_iou` or more is the same
        person. Below that both stay, whoever they are: one person hidden twice costs nothing, a person dropped
        for a neighbour's box would be shown."""
        if len(other) == 0:
            return self
        new = np.ones(len(other), bool) if len(self) == 0 else box_iou(other.boxes, self.boxes).max(axis=1) < same_iou
        return self.with_persons(other.boxes[new], other.scores[new], other.keypoints[new]) if new.any() else self

    def resized(self, frame_shape: tuple[int, int]) -> Detections:
        """These persons in the same picture stored at another size (h, w): boxes and keypoints scaled, each
        outline kept wherever it covered any of a pixel (a mask made smaller must not lose a thin arm)."""
        if tuple(frame_shape) == self.frame_shape:
            return self
        import cv2

        h, w = frame_shape
        scale = np.float32([w / self.frame_shape[1], h / self.frame_shape[0]])
        keypoints = self.keypoints.copy()
        keypoints[..., :2] *= scale
        masks = None
        if self.masks is not None:
            masks = np.zeros((len(self), h, w), bool)
            for i, mask in enumerate(self.masks):
                masks[i] = cv2.resize(mask.view(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) > 0
        return Detections((h, w), self.boxes * np.tile(scale, 2), self.scores, keypoints, masks, self.detected)

    def keypoints_for(self, boxes: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
        """Keypoints of this frame's persons that best overlap `boxes` (zeros where none does)."""
        out = np.zeros((len(boxes), NUM_KEYPOINTS, 3), np.float32)
        if len(boxes) == 0 or len(self) == 0:
            return out
        iou = box_iou(boxes, self.boxes)
        best = iou.argmax(axis=1)
        for i, j in enumerate(best):
            if iou[i, j] >= min_iou:
                out[i] = self.keypoints[j]
        return out

    def to_meta(self, held: bool = False) -> list[dict]:
        """Per-person metadata as plain lists (JSON and msgpack friendly). On a frame the detector did not
        look at, persons are `interpolated`: where they are between the detections on either side; `held`
        persons are where the mask hold hides someone the detector did not find (or scored too low for a
        skeleton), with the skeleton they last had (`MaskHold.held_skeletons`)."""
        extra = ({} if self.detected else {"interpolated": True}) | ({"held": True} if held else {})
        return [
            {
                "box": [round(float(v), 1) for v in box],
                "score": round(float(score), 4),
                "keypoints": [[round(float(x), 1), round(float(y), 1), round(float(c), 3)] for x, y, c in kps],
                **extra,
            }
            for box, score, kps in zip(self.boxes, self.scores, self.keypoints)
        ]


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise areas where xyxy boxes meet, shape (len(a), len(b))."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(br - tl, 0, None), axis=2)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    inter = _intersections(a, b)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise area of intersection of xyxy boxes over the smaller one's, shape (len(a), len(b))."""
    area_a, area_b = (np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1) for x in (a, b))
    return _intersections(a, b) / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-9)


def share_within(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise share of each xyxy box of `a` that lies within each of `b`, shape (len(a), len(b))."""
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    return _intersections(a, b) / np.maximum(area_a[:, None], 1e-9)


def box_covered(a: np.ndarray, by: np.ndarray) -> np.ndarray:
    """The share of each xyxy box of `a` that the boxes `by` cover together (to the whole pixel), shape (len(a),):
    a person found split into overlapping boxes covers what none of them does alone."""
    shares = np.zeros(len(a))
    for i, (x0, y0, x1, y1) in enumerate(a):
        left, top = int(np.floor(x0)), int(np.floor(y0))
        inside = np.zeros((max(int(np.ceil(y1)) - top, 1), max(int(np.ceil(x1)) - left, 1)), bool)
        for bx0, by0, bx1, by1 in by:
            inside[max(int(np.floor(by0)) - top, 0):max(int(np.ceil(by1)) - top, 0),
                   max(int(np.floor(bx0)) - left, 0):max(int(np.ceil(bx1)) - left, 0)] = True
        shares[i] = inside.mean()
    return shares


def _masks_at_frame_size(masks: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Resizes (N, h, w) masks to the frame; callers ask Ultralytics for retina masks, so this is rare."""
    import cv2

    h, w = frame_shape
    if masks.shape[1:] == (h, w):
        return masks > 0.5
    return np.stack([cv2.resize(m.astype(np.float32), (w, h)) > 0.5 for m in masks]) if len(masks) else (
        np.zeros((0, h, w), bool)
    )


def _expect(arr, name: str, shape: tuple, dtype) -> None:
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
        got = f"{type(arr).__name__} {getattr(arr, 'shape', '')} {getattr(arr, 'dtype', '')}"
        raise ValueError(f"Detections.{name}: expected ndarray {shape} {np.dtype(dtype)}, got {got}")
