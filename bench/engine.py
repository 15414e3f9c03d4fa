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
    """Frames/s from the first frame written to the last (model loading excluded, as for inline)."""
    launcher = Launcher(cfg)
    first = {}

    def on_stats(stats):
        if stats.get(("encode", "-"), {}).get("frames", 0) > 0 and "t" not in first:
            first["t"], first["n"] = time.perf_counter(), stats[("encode", "-")]["frames"]

    launcher.on_stats = on_stats
    cfg.engine.stats_interval_s = 0.1
    launcher.start()
    launcher.run()
    end = time.perf_counter()
    done = sum(d.frames for d in launcher.done.values())
    assert done == frames * len(cfg.cameras), f"engine wrote {done} frames"
    return (done - first["n"]) / (end - first["t"])


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
