"""The single-process reference: every stage chained in one loop, one frame at a time.

The engine's output is compared against this path; it is also the simplest way to anonymize a file.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from anonengine.compositor import Learnt
from anonengine.config import CameraConfig, EngineConfig
from anonengine.detections import Detections
from anonengine.errors import InputError
from anonengine.interrupts import INTERRUPTS
from anonengine.sources import is_live
from anonengine.stages import CaptureStage, CompositeStage, DetectStage, EncodeStage
from anonengine.timeline import Timeline
from anonengine.video import Frame


@dataclass
class CameraResult:
    camera: str
    frames: int
    obscured: int
    persons: int
    total: int = 0  # frames in the source, 0 when unknown (live)
    dropped: int = 0  # a live source's frames dropped while this was behind it (`sources.buffer_s`)
    output: Path | None = None  # where the video is: its final name, or its `.partial` one if interrupted
    interrupted_by: int | None = None  # the signal that stopped a file before its end
    damage: str = ""  # what the source lost to damage (`VideoReader.damage`): "" where nothing


def run_inline(cfg: EngineConfig, progress: bool = False, detect: DetectStage | None = None,
               on_frame: Callable[[], None] | None = None) -> list[CameraResult]:
    """Anonymizes each camera of `cfg` in turn; raises AnonError on bad input, leaving no output (a live source
    whose connection got stuck, `LiveFeed.stuck`, ends there: its frames are kept, and the error says so).

    `detect`: a set-up detect stage to reuse (several runs, one model load); else one is made.
    `on_frame`: called after each frame written (a batch's progress bar).
    A stop signal (SIGINT, SIGTERM, SIGHUP, with `INTERRUPTS` installed) is read between frames: a live
    source ends there, as it would at its end; a file keeps the frames done so far, playable, under the
    output's `.partial` name, and the cameras after it are not started.
    """
    # The detector is set up by the first camera once its source and output are open: loading the
    # model takes seconds, and a missing or broken file should be reported before that.
    owned = detect is None
    detect = detect or DetectStage(cfg.anonymizer, cfg.engine.max_batch)
    results = []
    try:
        for cam in cfg.cameras:
            results.append(_run_camera(cam, cfg, detect, progress, on_frame))
            if results[-1].interrupted_by is not None:
                break
        return results
    finally:
        if owned:
            detect.close()


def _run_camera(cam: CameraConfig, cfg: EngineConfig, detect: DetectStage, progress: bool,
                on_frame: Callable[[], None] | None = None) -> CameraResult:
    composite = CompositeStage(cfg.anonymizer, {cam.name: cam.privacy_zones})
    result = CameraResult(cam.name, 0, 0, 0)
    with CaptureStage(cam, cfg.sources) as capture:
        live = is_live(cam.source, cam.live, cam.stream)
        result.total = capture.info.frames
        ahead = composite.start(cam.name, live, capture.info.width, capture.info.height)
        detect.turned_by[cam.name] = cam.rotate
        encode = EncodeStage(cam.output, capture.info, cfg.encoder, cam.metadata, live=live)
        encode.setup()
        bar = _progress_bar(capture.info.frames, cam.name, progress)
        try:
            if detect.detector is None:
                detect.setup()
            with INTERRUPTS.deferred():
                stop = lambda: INTERRUPTS.requested  # noqa: E731
                frames = capture.frames(should_stop=stop)
                # A live source's stop is its end; a file's frames still waiting for their look-ahead are
                # not done, and stay out of the partial output.
                for frame, image, learnt in anonymize_frames(frames, detect, composite,
                                                              cfg.anonymizer.lookahead(live),
                                                              stop=stop, flush_on_stop=live, ahead=ahead,
                                                              batch=1 if live else detect.max_batch):
                    meta = (learnt.meta(), learnt.motion_meta()) if learnt is not None else (None, None)
                    encode.process(frame, image, *meta)
                    result.frames += 1
                    result.obscured += learnt is None
                    result.persons += len(learnt.persons) if learnt is not None else 0
                    bar.update()
                    if on_frame is not None:
                        on_frame()
                stopped = INTERRUPTS.signum
                result.dropped = capture.feed.dropped if capture.feed is not None else 0
                result.damage = capture.reader.damage if capture.reader is not None else ""
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
        if capture.stuck is not None:
            kept = f"its {result.frames} frames before are in {result.output}" if result.frames else "no frame before"
            raise InputError(f"{capture.stuck}: {kept}")
    return result


def anonymize_frames(frames: Iterable[Frame], detect: DetectStage, composite: CompositeStage, lookahead: int,
                     stop: Callable[[], bool] = lambda: False, flush_on_stop: bool = True, ahead: int = 0,
                     batch: int = 1) -> Iterator[tuple[Frame, np.ndarray, Learnt | None]]:
    """(frame, anonymized image, what was learnt of it or None when obscured) for each frame, in order.

    The same timeline as the engine's compositor: a frame is learnt once the detections of the next
    `lookahead` frames are known (here, right after they are detected), and rendered once `ahead` more
    frames were learnt (a recording's future, `CompositeStage.start`). Once `stop()` is true, the frames
    still waiting go out only with `flush_on_stop` (a live source's stop is its end).
    Up to `batch` frames are detected at once (a GPU's throughput) where the schedule lets them wait for
    each other: at stride 1. A live source gains nothing from it worth the latency: batch 1.
    """
    timeline: Timeline[Frame, tuple[Detections | None, bool]] = Timeline(lookahead)
    waiting: deque[tuple[Frame, Learnt | None]] = deque()
    schedule = detect.schedule(ahead=ahead)
    wanted: list[Frame] = []  # frames to detect together, up to `batch`
    frames_seen = 0

    def detect_wanted() -> None:
        if not wanted:
            return
        for frame, detections in zip(wanted, detect.process([f.image for f in wanted], [f.pixel_aspect for f in wanted],
                                                            [f.camera for f in wanted])):
            schedule.saw(frame.seq, detections)
            timeline.offer(frame.seq, frame)
            timeline.answer(frame.seq, (detections, True))
        wanted.clear()

    for frame in frames:
        if stop():
            break
        frames_seen = frame.seq + 1
        if schedule.wants(frame.seq, frame.pts, frame.last, frame.at_break, frame.changed, frame.came):
            wanted.append(frame)
            # With a stride, the frames the schedule wants next depend on this detection: it runs now.
            if len(wanted) < batch and not schedule.pending:
                continue
            detect_wanted()
        else:  # between detections: the boxes of those on either side hide persons
            detect_wanted()
            timeline.offer(frame.seq, frame)
            timeline.answer(frame.seq, (Detections.undetected(frame.image.shape[:2]), False))
        yield from _learn_turns(timeline, composite, waiting, ahead)
    if stop() and not flush_on_stop:
        return
    detect_wanted()
    timeline.end_at(frames_seen)
    yield from _learn_turns(timeline, composite, waiting, ahead)
    while waiting:
        yield _rendered(composite, *waiting.popleft())


def _learn_turns(timeline: Timeline, composite: CompositeStage, waiting: deque, ahead: int):
    """Learns the frames whose turn it is, rendering each frame as soon as `ahead` frames after it were learnt, as
    the engine's compositor does: a batch of detections let many through at once, all learnt before the first
    was rendered, and its fill came of frames further on than the engine's (the same persons hidden, a strip of
    the fill unlike in 23 of a lamp clip's 100 frames)."""
    while True:
        while len(waiting) > ahead:
            yield _rendered(composite, *waiting.popleft())
        if (turn := timeline.next()) is None:
            return
        detections, _ = turn.result
        upcoming = timeline.upcoming(turn.seq)
        future = [found for _, (found, _) in upcoming]
        frames_after = [frame for frame, _ in upcoming]

        def future_pixels(frames_on: int, box: tuple[int, int, int, int], frames_after=frames_after):
            after = frames_after[frames_on - 1]
            return None if after is None else after.image[box[1] : box[3], box[0] : box[2]]

        waiting.append((turn.item, composite.learn(turn.item, detections, future, future_pixels)))
        timeline.done(turn.seq)


def _rendered(composite: CompositeStage, frame: Frame, learnt: Learnt | None):
    """(frame, its image, what was learnt of it as drawn: its persons and skeletons; None when it is obscured)."""
    return frame, *composite.render(frame, learnt)


def _progress_bar(total: int, camera: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total or None,
        desc=camera,
        unit="frame",
        disable=not (enabled and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
