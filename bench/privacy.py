"""Privacy benchmark: leak rate and background error per case, anonengine against the seed's algorithm.

    python bench/privacy.py [--frames 48] [--width 640 --height 360] [--audit]

Each case is a clip generated from real person images with known truth (persons' boxes and the true
background of every frame). Both methods get the same detections from the real pose model, with the
same detector faults injected, so the difference is what each does with them:
- seed: background initialised from frame 0, running average outside per-frame dilated boxes,
  Gaussian-blurred mask, alpha blend (the algorithm of ../shared/SEED.md);
- anonengine: the `bbox` compositor (seen-pixel background with fill, mask hold, edges, cut reset,
  camera motion followed), as configured by default (look-ahead of LOOKAHEAD frames), without
  look-ahead, with the camera's motion not followed ("fixed camera", as before issue 11), and
  detecting on every STRIDE-th frame only (`detector.stride`). Skeletons are off for all, so that bg err measures
  the reconstruction alone.

Per case and method it prints:
- leak: share of (frame, person) pairs where >1% of the person's distinctive pixels (those that
  differ from the true background by > 40) come out as filmed (within 12 grey levels, in a 3x3
  neighbourhood, so that a smooth fill that merely has the colour of a coat is not counted);
- audit: share of person frames where the independent adversary (`anonengine audit`: pose model,
  low threshold, imgsz 960, frame and mirror image) finds a person over unchanged pixels (--audit);
- bg err: mean absolute error against the true background inside the persons' boxes (grey levels);
- flicker: mean change between consecutive output frames inside the boxes of persons who stand still
  in the frame (grey levels): what hides them should hold still (a pan moves the scene, and persons
  cut in by it, so there it is not flicker alone).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from anonengine import models
from anonengine.compositor import Compositor
from anonengine.config import AnonymizerConfig, EncoderConfig, HoldConfig
from anonengine.detections import Detections
from anonengine.detector import PersonDetector
from anonengine.sample import ACTORS, render_frames
from anonengine.video import VideoWriter

LOOKAHEAD = HoldConfig().lookahead_frames  # the default
STRIDES = (2, 3)  # `detector.stride`: detections on every Nth frame only, the hold covers the others
ENTERING = (
    ("bus_left", 0.60, (-0.10, 0.55), (0.45, 0.55)),  # walks in from the left edge
    ("zidane", 0.45, (1.10, 0.40), (0.62, 0.40)),  # and in from the right
)


def cases(frames: int) -> dict[str, dict]:
    k = max(2, frames // 10)
    return {
        "still from frame 0": {"actors": ACTORS},
        f"detector misses {k} frames": {"actors": ACTORS, "missed": range(frames // 2, frames // 2 + k)},
        "entering at the edges": {"actors": ENTERING},
        "slow pan": {"actors": ACTORS, "pan": 0.25},
        "fast pan": {"actors": ACTORS, "pan": 1.0},
        "hand-held shake": {"actors": ACTORS, "shake": 3.0},
        "scene cut": {"actors": ACTORS, "cut_at": frames // 2},
    }


def seed_algorithm(images: list[np.ndarray], detections: list[Detections], alpha: float = 0.05) -> list[np.ndarray]:
    """The seed's plain per-frame algorithm (background from frame 0)."""
    background = images[0].astype(np.float32)
    out = []
    for image, det in zip(images, detections):
        mask = np.zeros(image.shape[:2], np.uint8)
        for x0, y0, x1, y1 in det.boxes.astype(int):
            mask[max(0, y0):y1, max(0, x0):x1] = 255
        mask = cv2.dilate(mask, np.ones((15, 15), np.uint8))
        cv2.accumulateWeighted(image, background, alpha, mask=cv2.bitwise_not(mask))
        soft = cv2.GaussianBlur(mask, (21, 21), 0).astype(np.float32)[..., None] / 255
        out.append((image * (1 - soft) + background * soft).astype(np.uint8))
    return out


def anonengine_algorithm(images: list[np.ndarray], detections: list[Detections], cfg: AnonymizerConfig,
                         stride: int = 1):
    """The compositor as the inline path runs it: look-ahead over the detected frames only."""
    compositor = Compositor(cfg)
    n = cfg.hold.lookahead_frames
    ahead = [[d for j, d in enumerate(detections[i + 1 : i + 1 + n], i + 1) if j % stride == 0]
             for i in range(len(detections))]
    return [compositor.process(image, det, ahead[i]) for i, (image, det) in enumerate(zip(images, detections))]


def leak_and_error(images, outputs, scenes, truth) -> tuple[float, float, int]:
    pairs = leaked = 0
    errors = []
    for image, out, scene, persons in zip(images, outputs, scenes, truth):
        for p in persons:
            x0, y0, x1, y1 = p["box"]
            box = (slice(y0, y1), slice(x0, x1))
            a, b, bg = image[box].astype(int), out[box].astype(int), scene[box].astype(int)
            distinctive = np.abs(a - bg).max(axis=2) > 40
            if distinctive.sum() < 50:
                continue  # too little of the person in view to judge
            pairs += 1
            shown = (distinctive & (np.abs(b - a).max(axis=2) < 12)).astype(np.uint8)
            # A person shown keeps their structure; scattered single pixels are a fill that happens to
            # have the colour of a coat. Only matches whose 3x3 neighbourhood matches too count.
            shown = cv2.erode(shown, np.ones((3, 3), np.uint8))
            leaked += shown.sum() > 0.01 * distinctive.sum()
            errors.append(np.abs(b - bg).mean())
    return leaked / max(1, pairs), float(np.mean(errors)) if errors else math.nan, pairs


def flicker(outputs, truth) -> float:
    """Mean change between consecutive output frames over persons who stand still (in the frame): what
    replaces them should hold still too. NaN when nobody stands still."""
    changes = []
    for before, after, persons in zip(outputs, outputs[1:], truth[1:]):
        for p in persons:
            if p["still"]:
                x0, y0, x1, y1 = p["box"]
                changes.append(np.abs(after[y0:y1, x0:x1].astype(int) - before[y0:y1, x0:x1]).mean())
    return float(np.mean(changes)) if changes else math.nan


def audit_rate(images, outputs, truth, tmp: Path, fps: int) -> float:
    from anonengine.audit import audit

    paths = []
    for name, frames in (("original", images), ("anonymized", outputs)):
        path = tmp / f"{name}.mp4"
        h, w = frames[0].shape[:2]
        writer = VideoWriter(path, w, h, Fraction(fps), Fraction(1, fps), EncoderConfig(preset="medium", crf=10))
        for i, image in enumerate(frames):
            writer.write(image, i)
        writer.close()
        paths.append(str(path))
    report = audit(*paths)
    person_frames = sum(1 for persons in truth if persons)
    return len(report.flagged) / max(1, person_frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--audit", action="store_true", help="also run the adversary (slow on a CPU)")
    parser.add_argument("--strides", type=int, nargs="*", default=list(STRIDES))
    args = parser.parse_args()
    cfg = AnonymizerConfig()
    cfg.detector.pose_model = str(models.pull("yolo11n-pose.pt"))
    cfg.pose.enabled = False  # the seed's algorithm here draws none either: bg err measures reconstruction
    ahead = cfg.model_copy(deep=True)
    ahead.hold.lookahead_frames = LOOKAHEAD
    cfg.hold.lookahead_frames = 0
    detector = PersonDetector(cfg)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in cases(args.frames).items():
            rendered = list(render_frames(args.width, args.height, args.frames, actors=case["actors"],
                                          pan=case.get("pan", 0.0), cut_at=case.get("cut_at"),
                                          shake=case.get("shake", 0.0)))
            images = [r[0] for r in rendered]
            scenes = [r[1] for r in rendered]
            truth = [r[2] for r in rendered]
            detections = [detector.detect([image])[0] for image in images]
            for i in case.get("missed", ()):
                detections[i] = Detections.empty(detections[i].frame_shape)
            fixed = ahead.model_copy(deep=True)
            fixed.background.follow_camera = False
            runs = [("seed", seed_algorithm(images, detections)),
                    ("no lookahead", anonengine_algorithm(images, detections, cfg)),
                    ("fixed camera", anonengine_algorithm(images, detections, fixed)),
                    ("anonengine", anonengine_algorithm(images, detections, ahead))]
            for stride in args.strides:
                strided = [d if i % stride == 0 else Detections.undetected(d.frame_shape)
                           for i, d in enumerate(detections)]
                strided_cfg = ahead.model_copy(deep=True)
                strided_cfg.detector.stride = stride
                runs.append((f"stride {stride}", anonengine_algorithm(images, strided, strided_cfg, stride)))
            for method, outputs in runs:
                leak, error, pairs = leak_and_error(images, outputs, scenes, truth)
                audited = audit_rate(images, outputs, truth, Path(tmp), 25) if args.audit else math.nan
                rows.append((name, method, leak, audited, error, flicker(outputs, truth), pairs))
    print(f"clips {args.width}x{args.height}, {args.frames} frames, yolo11n-pose at imgsz {cfg.detector.imgsz}")
    print(f"{'case':28s} {'method':13s} {'leak':>6s} {'audit':>6s} {'bg err':>7s} {'flicker':>7s} {'pairs':>6s}")
    for name, method, leak, audited, error, flickers, pairs in rows:
        print(f"{name:28s} {method:13s} {leak:6.1%} {audited:6.1%} {error:7.1f} {flickers:7.2f} {pairs:6d}")


if __name__ == "__main__":
    main()
