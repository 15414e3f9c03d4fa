"""The single-process reference: every stage chained in one loop, one frame at a time.

The engine's output is compared against this path; it is also the simplest way to anonymize a file.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from anonengine.config import CameraConfig, EngineConfig
from anonengine.detections import Detections
from anonengine.interrupts import INTERRUPTS
from anonengine.stages import CaptureStage, CompositeStage, DetectStage, EncodeStage


@dataclass
class CameraResult:
    camera: str
    frames: int
    obscured: int
    persons: int
    total: int = 0  # frames in the source, 0 when unknown (live)
    output: Path | None = None  # where the video is: its final name, or its `.partial` one if interrupted
    interrupted_by: int | None = None  # the signal that stopped a file before its end


def run_inline(cfg: EngineConfig, progress: bool = False, detect: DetectStage | None = None) -> list[CameraResult]:
    """Anonymizes each camera of `cfg` in turn; raises AnonError on bad input, leaving no output.

    `detect`: a set-up detect stage to reuse (several runs, one model load); else one is made.
    A stop signal (SIGINT, SIGTERM, SIGHUP, with `INTERRUPTS` installed) is read between frames: a live
    source ends there, as it would at its end; a file keeps the frames done so far, playable, under the
    output's `.partial` name, and the cameras after it are not started.
    """
    # The detector is set up by the first camera once its source and output are open: loading the
    # model takes seconds, and a missing or broken file should be reported before that.
    owned = detect is None
    detect = detect or DetectStage(cfg.anonymizer)
    results = []
    try:
        for cam in cfg.cameras:
            results.append(_run_camera(cam, cfg, detect, progress))
            if results[-1].interrupted_by is not None:
                break
        return results
    finally:
        if owned:
            detect.close()


def _run_camera(cam: CameraConfig, cfg: EngineConfig, detect: DetectStage, progress: bool) -> CameraResult:
    composite = CompositeStage(cfg.anonymizer, {cam.name: cam.privacy_zones})
    result = CameraResult(cam.name, 0, 0, 0)
    with CaptureStage(cam.source, cam.name) as capture:
        live = capture.info.live if cam.live is None else cam.live
        result.total = capture.info.frames
        encode = EncodeStage(cam.output, capture.info, cfg.encoder, cam.metadata)
        encode.setup()
        bar = _progress_bar(capture.info.frames, cam.name, progress)
        try:
            if detect.detector is None:
                detect.setup()
            # With look-ahead, a frame is composited once the detections of the next N frames are known.
            window: deque = deque()
            lookahead = cfg.anonymizer.hold.lookahead_frames
            with INTERRUPTS.deferred():
                for frame in capture.frames():
                    if INTERRUPTS.requested:
                        break
                    if detect.skips(frame.seq):
                        window.append((frame, Detections.undetected(frame.image.shape[:2]), False))
                    else:
                        window.append((frame, *detect.process([frame.image]), True))
                    if len(window) > lookahead:
                        _emit(window, composite, encode, result)
                        bar.update()
                stopped = INTERRUPTS.signum
                # A live source's stop is its end; a file's frames still waiting for their look-ahead are
                # not done, and stay out of the partial output.
                while window and (stopped is None or live):
                    _emit(window, composite, encode, result)
                    bar.update()
        except BaseException:
            encode.abort()
            raise
        finally:
            bar.close()
        complete = stopped is None or live
        if result.frames == 0 and not complete:
            encode.abort()
        else:
            result.output = encode.close(complete)
        result.interrupted_by = None if complete else stopped
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
