"""The single-process reference: every stage chained in one loop, one frame at a time.

The engine's output is compared against this path; it is also the simplest way to anonymize a file.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

from anonengine.config import CameraConfig, EngineConfig
from anonengine.detections import Detections
from anonengine.stages import CaptureStage, CompositeStage, DetectStage, EncodeStage


@dataclass
class CameraResult:
    camera: str
    frames: int
    obscured: int
    persons: int


def run_inline(cfg: EngineConfig, progress: bool = False, detect: DetectStage | None = None) -> list[CameraResult]:
    """Anonymizes each camera of `cfg` in turn; raises AnonError on bad input, leaving no output.

    `detect`: a set-up detect stage to reuse (several runs, one model load); else one is made.
    """
    # The detector is set up by the first camera once its source and output are open: loading the
    # model takes seconds, and a missing or broken file should be reported before that.
    owned = detect is None
    detect = detect or DetectStage(cfg.anonymizer)
    try:
        return [_run_camera(cam, cfg, detect, progress) for cam in cfg.cameras]
    finally:
        if owned:
            detect.close()


def _run_camera(cam: CameraConfig, cfg: EngineConfig, detect: DetectStage, progress: bool) -> CameraResult:
    composite = CompositeStage(cfg.anonymizer, {cam.name: cam.privacy_zones})
    result = CameraResult(cam.name, 0, 0, 0)
    with CaptureStage(cam.source, cam.name) as capture:
        encode = EncodeStage(cam.output, capture.info, cfg.encoder, cam.metadata)
        encode.setup()
        bar = _progress_bar(capture.info.frames, cam.name, progress)
        try:
            if detect.detector is None:
                detect.setup()
            # With look-ahead, a frame is composited once the detections of the next N frames are known.
            window: deque = deque()
            lookahead = cfg.anonymizer.hold.lookahead_frames
            for frame in capture.frames():
                if detect.skips(frame.seq):
                    window.append((frame, Detections.undetected(frame.image.shape[:2]), False))
                else:
                    window.append((frame, *detect.process([frame.image]), True))
                if len(window) > lookahead:
                    _emit(window, composite, encode, result)
                    bar.update()
            while window:
                _emit(window, composite, encode, result)
                bar.update()
        except BaseException:
            encode.abort()
            raise
        finally:
            bar.close()
        encode.close()
    return result


def _emit(window: deque, composite: CompositeStage, encode: EncodeStage, result: CameraResult) -> None:
    frame, detections, _ = window.popleft()
    future = [d for _, d, detected in window if detected]  # frames between detections tell nothing
    persons = detections.to_meta() if detections is not None else None
    encode.process(frame, composite.process(frame, detections, future), persons)
    result.frames += 1
    result.obscured += detections is None
    result.persons += len(detections) if detections is not None else 0


def _progress_bar(total: int, camera: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total or None,
        desc=camera,
        unit="frame",
        disable=not (enabled and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
