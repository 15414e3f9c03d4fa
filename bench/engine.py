"""Throughput of the inline path and of the engine with 1 and 4 cameras, on the same clip, in one run.

    python bench/engine.py [--frames 96] [--width 640 --height 360] [--imgsz 640]

Prints frames/s (all cameras together) and the ratios against --inline. Also measures whether a
subscriber that sleeps on the tap lowers the engine's throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from anonengine import models
from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.launcher import Launcher
from anonengine.inline import run_inline
from anonengine.sample import make_sample
from anonengine.tap import SeqGaps, subscribe


def config(clip, out: Path, cameras: int, imgsz: int, tap: str = "") -> EngineConfig:
    cfg = EngineConfig(cameras=[CameraConfig(name=f"cam{i}", source=str(clip.video), output=str(out / f"cam{i}.mp4"))
                                for i in range(cameras)])
    cfg.anonymizer.detector.imgsz = imgsz
    cfg.anonymizer.detector.pose_model = str(models.pull("yolo11n-pose.pt"))
    cfg.engine.exit_when_done = True
    cfg.engine.run_dir = str(out / "run")
    cfg.tap.endpoint = tap
    return cfg


def engine_fps(cfg: EngineConfig, frames: int) -> float:
    """Frames/s from the first frame written to the last (model loading and the stages' exit excluded)."""
    run = engine_run(cfg)
    assert run["done"] == frames * len(cfg.cameras), f"engine wrote {run['done']} frames"
    return run["fps_steady"]


def engine_run(cfg: EngineConfig, timeout_s: float | None = None, on_start=None) -> dict:
    """Runs the engine once over `cfg.cameras` and returns what it did.

    fps: frames written from the first written frame to the engine's exit, per second (engine_fps);
    fps_steady: the same up to the last frame written (the engine's stop and the stages' exit left out);
    done: frames the encoder reported written (CameraDone); stats: the stages' last counters, keyed
    (stage, name); t_start, t_first, t_last, t_end: perf_counter times of the start, the first and last
    frame written and the return; stopped: True when `timeout_s` ran out and the engine was stopped.
    progress: (time, frames written) as the encoder reported them, every 0.1 s or so.
    `on_start(launcher)` is called once the stages are spawned (to sample their processes).
    """
    cfg.engine.stats_interval_s = 0.1  # before the launcher copies the config
    launcher = Launcher(cfg)
    seen = {}
    progress = []

    def on_stats(stats):
        if "stop_t" in seen:
            return  # the stages' last counters, sent as they exit: no time to measure by
        written = stats.get(("encode", "-"), {}).get("frames", 0)
        now = time.perf_counter()
        if written and (not progress or written > progress[-1][1]):
            progress.append((now, written))
        if written > 0 and "t" not in seen:
            seen["t"], seen["n"] = now, written
        if written > seen.get("last_n", 0):
            seen["last_t"], seen["last_n"] = now, written

    launcher.on_stats = on_stats
    stop = launcher.stop

    def stop_and_note(*args, **kwargs):  # the run loop is over: every camera done, or stopped
        seen.setdefault("stop_t", time.perf_counter())
        return stop(*args, **kwargs)

    launcher.stop = stop_and_note
    t_start = time.perf_counter()
    timer = None
    if timeout_s is not None:
        timer = threading.Timer(timeout_s, launcher.request_stop)
        timer.daemon = True
        timer.start()
    try:
        launcher.start()
        if on_start is not None:
            on_start(launcher)
        launcher.run()
    finally:
        if timer is not None:
            timer.cancel()
    end = time.perf_counter()
    done = sum(d.frames for d in launcher.done.values())
    # A run too short for the encoder to report twice before the end is measured from the engine's start.
    t_first, n_first = (seen["t"], seen["n"]) if seen.get("n", done) < done else (t_start, 0)
    t_stop = seen.get("stop_t", end)
    # The last written frame: when the encoder's count reached the total, unless that count only came in
    # while the engine stopped; then when the run loop saw every camera done (within its 0.1 s poll).
    t_last = seen["last_t"] if seen.get("last_n") == done and seen.get("last_t", end) <= t_stop else t_stop
    return {
        "fps": (done - n_first) / (end - t_first) if end > t_first else 0.0,
        "fps_steady": (done - n_first) / (t_last - t_first) if t_last > t_first else 0.0,
        "done": done,
        "stats": dict(launcher.stats),
        "t_start": t_start,
        "t_first": t_first,
        "t_last": t_last,
        "t_end": end,
        "stopped": launcher.stop_requested,
        "progress": progress,
    }


def inline_fps(cfg: EngineConfig, frames: int) -> float:
    """Frames/s of the inline path, the model loaded (and exported for this frame size) beforehand."""
    from anonengine.detector import PersonDetector
    from anonengine.video import VideoReader

    first = next(iter(VideoReader(cfg.cameras[0].source))).image
    PersonDetector(cfg.anonymizer).detect([first])
    start = time.perf_counter()
    (result,) = run_inline(cfg)
    assert result.frames == frames, f"inline wrote {result.frames} frames"
    return result.frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        clip = make_sample(out / "clip", args.width, args.height, args.frames)
        inline = inline_fps(config(clip, out, 1, args.imgsz), args.frames)
        one = engine_fps(config(clip, out, 1, args.imgsz), args.frames)
        four = engine_fps(config(clip, out, 4, args.imgsz), args.frames)
        tap = f"ipc://{out}/tap.sock"  # loopback TCP would buffer megabytes before the subscriber misses any
        gaps = SeqGaps()
        stop = threading.Event()

        def sleepy():
            for meta, _ in subscribe(tap, timeout_s=30, hwm=1):
                gaps.see(meta)
                time.sleep(0.25)
                if stop.is_set():
                    return

        thread = threading.Thread(target=sleepy, daemon=True)
        thread.start()
        tapped_cfg = config(clip, out, 1, args.imgsz, tap=tap)
        tapped_cfg.tap.format, tapped_cfg.tap.hwm = "raw", 2
        tapped = engine_fps(tapped_cfg, args.frames)
        stop.set()
    print(f"clip {args.width}x{args.height}, {args.frames} frames, detector imgsz {args.imgsz}, bbox method")
    print(f"{'path':34s} {'frames/s':>9s} {'vs inline':>9s}")
    for name, fps in (("inline (one process)", inline), ("engine, 1 camera", one), ("engine, 4 cameras (total)", four),
                      ("engine, 1 camera + sleeping tap", tapped)):
        print(f"{name:34s} {fps:9.1f} {fps / inline:9.2f}")
    print(f"sleeping subscriber missed {gaps.missed} frames; engine with it / without: {tapped / one:.2f}")


if __name__ == "__main__":
    main()
