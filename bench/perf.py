"""End-to-end speed on a 720p generated clip, in one run: the seed's algorithm, --inline and the engine,
per backend and detector input size, with ratios against the seed.

    python bench/perf.py [--frames 96] [--width 1280 --height 720]

The seed's algorithm: two PyTorch models per frame (a detection model for boxes and the pose model),
float32 compositing at full resolution, one process. Offline, no plain detection weights can be had,
so the pose model stands in for the detection model (same size class: yolo11n). frames/s count from
the first frame to the last, model loading (and a backend's one-time export) excluded.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine import config, engine_fps, inline_fps  # noqa: E402 - bench/engine.py, beside this file

from anonengine import models  # noqa: E402
from anonengine.config import AnonymizerConfig  # noqa: E402
from anonengine.sample import make_sample  # noqa: E402
from anonengine.video import VideoReader, VideoWriter  # noqa: E402


def seed_fps(clip, out: Path, imgsz: int) -> float:
    """The seed: per frame, a box model and a pose model in PyTorch, float32 blend, one process."""
    from ultralytics import YOLO

    weights = str(models.pull("yolo11n-pose.pt"))
    box_model, pose_model = YOLO(weights), YOLO(weights)
    reader = VideoReader(str(clip.video))
    info = reader.info
    writer = VideoWriter(out / "seed.mp4", info.width, info.height, info.rate, info.time_base)
    background = None
    start, n = None, 0
    for frame in reader:
        image = frame.image
        boxes = box_model.predict(image, imgsz=imgsz, classes=[0], verbose=False)[0].boxes.xyxy.numpy()
        pose_model.predict(image, imgsz=imgsz, verbose=False)
        if start is None:
            start = time.perf_counter()  # after the first frame: models loaded
        mask = np.zeros(image.shape[:2], np.float32)
        for x0, y0, x1, y1 in boxes.astype(int):
            mask[y0:y1, x0:x1] = 1
        mask = cv2.dilate(mask, np.ones((15, 15), np.uint8))
        frame32 = image.astype(np.float32)
        background = frame32.copy() if background is None else background
        free = (1 - mask)[..., None]
        background = background * (1 - 0.05 * free) + frame32 * 0.05 * free
        soft = cv2.GaussianBlur(mask, (21, 21), 0)[..., None]
        writer.write((frame32 * (1 - soft) + background * soft).astype(np.uint8), frame.pts)
        n += 1
    writer.close()
    return (n - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        clip = make_sample(out / "clip", args.width, args.height, args.frames)
        seed = seed_fps(clip, out, 640)
        rows.append(("seed algorithm (torch x2, float32)", 640, seed))
        for backend in ("torch", "openvino"):
            for imgsz in (640, 320):
                cfg = config(clip, out, 1, imgsz)
                cfg.anonymizer.detector.backend = backend
                rows.append((f"--inline, {backend}", imgsz, inline_fps(cfg, args.frames)))
        cfg = config(clip, out, 1, 640)
        cfg.anonymizer.detector.stride = 2
        rows.append(("--inline, openvino, stride 2", 640, inline_fps(cfg, args.frames)))
        for imgsz in (640, 320):
            cfg = config(clip, out, 1, imgsz)
            rows.append(("engine, openvino, 1 camera", imgsz, engine_fps(cfg, args.frames)))
        cfg = config(clip, out, 3, 320)
        rows.append(("engine, openvino, 3 cameras (total)", 320, engine_fps(cfg, args.frames)))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{args.width}x{args.height}, {args.frames} frames, bbox method, {AnonymizerConfig().hold.lookahead_frames}"
          f"-frame look-ahead, 2 CPU cores")
    print(f"{'path':38s} {'imgsz':>5s} {'frames/s':>9s} {'vs seed':>8s}")
    for name, imgsz, fps in rows:
        print(f"{name:38s} {imgsz:5d} {fps:9.1f} {fps / seed:8.2f}")
    print(f"largest stage process: {peak_mb:.0f} MB resident")


if __name__ == "__main__":
    main()
