"""Person detection and pose behind one interface: frames in, `Detections` out.

`bbox` needs one pass of the pose model: its boxes are person detections. `seg` adds a segmentation
model for outlines; persons the pose model finds but the segmentation model misses are kept as
box-only persons, so one model's miss is not a leak.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from anonengine import models
from anonengine.backends import (
    ExportedModels,
    OpenVinoPose,
    check_int8,
    choose_backend,
    detector_long_side,
    letterbox_shape,
    ultralytics_yolo,
)
from anonengine.config import AnonymizerConfig
from anonengine.detections import Detections
from anonengine.errors import ModelError, first_line

log = logging.getLogger(__name__)

MATCH_IOU = 0.3
WIDE_FRAME = (720, 1280)  # 16:9, the shape of most cameras
NVIDIA_DRIVER = "/proc/driver/nvidia/version"  # there whenever a CUDA device can be


def select_device(spec: str) -> str:
    if spec == "cpu" or (spec == "auto" and not Path(NVIDIA_DRIVER).exists()):
        return "cpu"  # without importing PyTorch (a second of start-up) where no GPU can be
    import torch

    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec.isdigit():
        spec = f"cuda:{spec}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {spec} requested but CUDA is not available")
    return spec


def load_yolo(spec: str, task: str):
    """An Ultralytics YOLO model of the given task, or a one-line ModelError."""
    YOLO = ultralytics_yolo()

    # Importing Ultralytics sets its logger to INFO: its per-load chatter is not the user's business.
    logging.getLogger("ultralytics").setLevel(max(logging.WARNING, logging.getLogger().level))

    path = models.resolve(spec)
    try:
        model = YOLO(path, task=task)
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for a bad file
        raise ModelError(f"cannot load model {spec}: {first_line(exc)}")
    if model.task != task:
        raise ModelError(f"model {spec} is a {model.task} model, a {task} model is needed")
    return model


def batch_sizes(max_batch: int) -> list[int]:
    """The sizes batches are padded to on CUDA: powers of two, and `max_batch` itself."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


class PersonDetector:
    """Runs the configured models on batches of BGR frames.

    On CUDA, each input shape first seen costs PyTorch and cuDNN set-up, and batches that mix cameras
    come in every size up to `max_batch`. So batches are padded to a few sizes (`batch_sizes`), each run
    at start for 16:9 frames and for mixed batches, and for another input shape at its first batch.
    """

    def __init__(self, cfg: AnonymizerConfig, max_batch: int = 1, cpu_share: float = 1.0) -> None:
        self.cfg = cfg
        det = cfg.detector
        self.threads = cpu_threads(det.threads, cpu_share)
        self.device = select_device(det.device)
        self.half = det.half and self.device.startswith("cuda")
        self.backend = choose_backend(det.backend, self.device)
        if det.int8:
            check_int8(self.backend)
        self.pose = self._load(det.pose_model, "pose")
        self.outline = None
        if cfg.method == "seg":
            self.outline = self._load(det.seg_model, "segment")
        elif det.bbox_model:
            self.outline = self._load(det.bbox_model, "detect")
        self.padded_sizes = batch_sizes(max_batch) if self.backend == "torch" and self.device != "cpu" else None
        self._warm_shapes: set[tuple[int, int]] = set()
        self._warm_up()

    def _load(self, spec: str, task: str):
        """A torch YOLO model, or for another backend the per-shape exports of one (checked as torch first,
        unless the export this file's 16:9 frames need is cached: then PyTorch is not even imported)."""
        if self.backend == "torch" or models.is_architecture(spec):
            return load_yolo(spec, task)
        det = self.cfg.detector
        int8 = det.int8 and task == "pose"  # the INT8 accuracy checks are the pose model's
        exported = ExportedModels(models.resolve(spec), task, self.backend, det.imgsz, self.half, int8, self.threads)
        if not exported.runs_directly(WIDE_FRAME):
            load_yolo(spec, task)
        return exported

    def _warm_up(self) -> None:
        """Runs the model before any frame with a deadline: the first predict builds Ultralytics' predictor,
        loads (or exports) the model for an input shape and, on CUDA, sets up every padded batch size."""
        if isinstance(self.pose, ExportedModels) and self.outline is None and self.pose.runs_directly(WIDE_FRAME):
            # Compiled, an OpenVINO model run directly is ready: its first inference takes no longer than the
            # next (71 against 65 ms on 2 cores), and one more before the first frame would only delay it.
            self.pose.model_for(WIDE_FRAME)
            return
        # Exported models have one input shape each: only the 16:9 of most cameras. Torch also takes the
        # square of batches that mix frame sizes.
        shapes = ((self.cfg.detector.imgsz,) * 2, WIDE_FRAME) if self.backend == "torch" else (WIDE_FRAME,)
        for shape in shapes:
            self.detect([np.zeros((*shape, 3), np.uint8)])
        if self.backend == "torch" and self.device == "cpu":
            # Ultralytics pinned torch to cpu_count - 1 threads (1 on a 2-core machine) at the first predict.
            _set_torch_threads(self.threads)

    @property
    def batches(self) -> bool:
        """Whether a batch of frames runs as one (torch); exported models take one frame at a time."""
        return self.backend == "torch"

    def _predict(self, model, frames: list[np.ndarray], imgsz: int | None = None):
        """Ultralytics' results, or `Detections` where the model gives them directly (`OpenVinoPose`)."""
        if isinstance(model, ExportedModels):
            # Exported models take one frame of their own shape at a time (batching gains little on a CPU).
            det = self.cfg.detector
            results = []
            for frame in frames:
                exported, shape = model.model_for(frame.shape[:2], imgsz)
                if isinstance(exported, OpenVinoPose):
                    results.append(exported.detect(frame, det.person_conf, det.iou))
                    continue
                results += self._predict_with(exported, [frame], list(shape))
                model.after_predict(exported, shape)
            return results
        # One size for the batch (Ultralytics letterboxes its frames alike): the largest its frames need.
        return self._predict_with(model, frames, imgsz or max(detector_long_side(f.shape[:2], self.cfg.detector.imgsz)
                                                              for f in frames))

    def _predict_with(self, model, frames: list[np.ndarray], imgsz):
        det = self.cfg.detector
        return model.predict(
            frames,
            imgsz=imgsz,
            conf=det.person_conf,
            iou=det.iou,
            classes=[0],
            device=self.device,
            quantize=16 if self.half and self.backend == "torch" else None,
            retina_masks=True,
            verbose=False,
        )

    def detect(self, frames: list[np.ndarray], imgsz: int | None = None) -> list[Detections]:
        """The persons in each frame, looked for with its long side at `imgsz` (default `detector.imgsz`)."""
        if not frames:
            return []
        if imgsz is not None and imgsz != self.cfg.detector.imgsz:
            return self._detect(frames, imgsz)  # a photo's closer look: one frame, no batch to pad
        count = len(frames)
        if self.padded_sizes:
            # cuDNN plans belong to the detector's input shape: a 720p and a 1080p camera share one.
            inputs = {letterbox_shape(f.shape[:2], self.cfg.detector.imgsz): f.shape for f in frames}
            for input_shape, frame_shape in inputs.items():
                if input_shape not in self._warm_shapes:
                    self._warm_shapes.add(input_shape)
                    for size in self.padded_sizes:
                        self._detect([np.zeros(frame_shape, np.uint8)] * size)
            size = next(s for s in self.padded_sizes if s >= count) if count <= self.padded_sizes[-1] else count
            frames = frames + [frames[-1]] * (size - count)
        return self._detect(frames)[:count]

    def _detect(self, frames: list[np.ndarray], imgsz: int | None = None) -> list[Detections]:
        poses = [r if isinstance(r, Detections) else Detections.from_ultralytics(r)
                 for r in self._predict(self.pose, frames, imgsz)]
        if self.outline is None:
            return poses
        outlines = self._predict(self.outline, frames, imgsz)
        return [merge(Detections.from_ultralytics(r, keypoints_from=p), p) for r, p in zip(outlines, poses)]


def merge(primary: Detections, pose: Detections) -> Detections:
    """`primary` persons, plus the pose persons no primary box overlaps (as box-only persons)."""
    return primary.adding(pose, MATCH_IOU)


def cpu_threads(threads: int, share: float = 1.0) -> int:
    """The CPU inference threads: `threads` where set (`detector.threads`); else `share` of the cores this
    process may use, at least one; 0 when that is all of them (the backend's own default).

    Beside the engine's compositors and encoders, a detector on every core loses: its parallel steps wait
    for whichever thread was preempted. On 2 cores, one thread took 65 ms of CPU an inference against 86 on
    two, and the engine ran the street clip in 13.4 against 14.5 s (alternated runs)."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0))
    wanted = max(1, int(cores * share))
    return 0 if wanted >= cores else wanted


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
