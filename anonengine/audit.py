"""An independent adversary over anonymized video: does a detector still find anyone?

It runs the pose model harder than the engine does (low threshold, larger input, the frame and its
mirror image) on every anonymized frame. A find whose pixels are still the original's
(`UNCHANGED_SHARE` of its box within `UNCHANGED_LEVELS` grey levels) is a leak: a person shown as
filmed. A find over replaced pixels is the drawn skeleton or the fill (a stick figure is meant to
read as a person) and is reported apart. Output: JSON, and a contact sheet of the worst frames
(original | anonymized, finds boxed: red for leaks, yellow for the rest).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anonengine import models
from anonengine.contact_sheet import _panel
from anonengine.detections import box_iou
from anonengine.detector import select_device
from anonengine.video import VideoReader

UNCHANGED_SHARE = 0.6
UNCHANGED_LEVELS = 12  # grey levels: what two encodes of the same picture differ by
SAME_FIND_IOU = 0.5  # a find in the mirror image this close to a direct find is the same person


@dataclass
class AuditFrame:
    index: int
    time: float
    persons: list[dict] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max((p["score"] for p in self.persons), default=0.0)


@dataclass
class AuditReport:
    original: str
    anonymized: str
    frames: int
    conf: float
    imgsz: int
    flagged: list[AuditFrame]  # frames with at least one leak
    drawn: list[AuditFrame] = field(default_factory=list)  # frames with finds over replaced pixels only

    @property
    def skeleton_only(self) -> int:
        return len(self.drawn)

    @property
    def leak_rate(self) -> float:
        return len(self.flagged) / max(1, self.frames)

    @property
    def found(self) -> int:
        """Frames where the adversary found anything, leak or skeleton."""
        return len(self.flagged) + self.skeleton_only

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("flagged", "drawn")},
                "leak_rate": self.leak_rate, "flagged": [asdict(f) for f in self.flagged],
                "skeleton_finds": [asdict(f) for f in self.drawn]}


def audit(original: str, anonymized: str, pose_model: str = "yolo11n-pose.pt", conf: float = 0.2,
          imgsz: int = 960, device: str = "auto", augment: bool = True) -> AuditReport:
    from ultralytics import YOLO

    model = YOLO(models.resolve(pose_model), task="pose")
    device = select_device(device)
    flagged, drawn, count = [], [], 0
    for source, frame in zip(VideoReader(original), VideoReader(anonymized)):
        count += 1
        # An odd-sized original is encoded one pixel larger (its edge repeated): compare the same pixels.
        frame.image = frame.image[: source.image.shape[0], : source.image.shape[1]]
        leaks, others = [], []
        for box, score in adversary_finds(model, frame.image, imgsz, conf, device, augment):
            find = {"box": [round(float(v), 1) for v in box], "score": round(float(score), 3)}
            (leaks if unchanged_share(source.image, frame.image, box) >= UNCHANGED_SHARE else others).append(find)
        if leaks:
            flagged.append(AuditFrame(frame.seq, round(frame.time, 6), leaks))
        elif others:
            drawn.append(AuditFrame(frame.seq, round(frame.time, 6), others))
    return AuditReport(original, anonymized, count, conf, imgsz, flagged, drawn)


def adversary_finds(model, image: np.ndarray, imgsz: int, conf: float, device: str, mirrored: bool):
    """(box, score) of every person found; with `mirrored`, also those found in the mirror image.

    Ultralytics' own test-time augmentation does not run for pose models, so the mirror is done here:
    a person a detector misses one way round is often found the other.
    """
    views = [image, np.ascontiguousarray(image[:, ::-1])] if mirrored else [image]
    results = model.predict(views, imgsz=imgsz, conf=conf, device=device, verbose=False)
    boxes, scores = results[0].boxes.xyxy.cpu().numpy(), results[0].boxes.conf.cpu().numpy()
    finds = list(zip(boxes, scores))
    if mirrored:
        width = image.shape[1]
        for box, score in zip(results[1].boxes.xyxy.cpu().numpy(), results[1].boxes.conf.cpu().numpy()):
            box = np.array([width - box[2], box[1], width - box[0], box[3]], np.float32)
            if not len(boxes) or box_iou(box[None], boxes).max() < SAME_FIND_IOU:  # else found both ways
                finds.append((box, score))
    return finds


def unchanged_share(original: np.ndarray, anonymized: np.ndarray, box: np.ndarray) -> float:
    """Share of the box's pixels that the anonymizer left as they were."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    a, b = original[y0:y1, x0:x1].astype(np.int16), anonymized[y0:y1, x0:x1].astype(np.int16)
    if a.size == 0:
        return 0.0
    return float((np.abs(a - b).max(axis=2) <= UNCHANGED_LEVELS).mean())


def write_worst_frames(report: AuditReport, path: Path, rows: int = 6) -> Path | None:
    """Contact sheet of the frames with the most confident finds; None when nothing was found."""
    worst = sorted(report.flagged, key=lambda f: -f.worst)[:rows]
    if not worst:
        return None
    wanted = {f.index: f for f in worst}
    originals = {f.seq: f.image for f in VideoReader(report.original) if f.seq in wanted}
    lines = []
    for frame in VideoReader(report.anonymized):
        if frame.seq not in wanted:
            continue
        original = originals.get(frame.seq)
        height, width = original.shape[:2] if original is not None else frame.image.shape[:2]
        shown = frame.image[:height, :width].copy()  # an odd-sized original was encoded a pixel larger
        for p in wanted[frame.seq].persons:
            x0, y0, x1, y1 = map(int, p["box"])
            cv2.rectangle(shown, (x0, y0), (x1, y1), (0, 0, 255), 2)
            cv2.putText(shown, f"{p['score']:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 255), 1, cv2.LINE_AA)
        original = original if original is not None else np.zeros_like(shown)
        lines.append(np.hstack([_panel(original, f"original #{frame.seq}"), _panel(shown, f"found #{frame.seq}")]))
    cv2.imwrite(str(path), np.vstack(lines))
    return path


def write_report(report: AuditReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1))
