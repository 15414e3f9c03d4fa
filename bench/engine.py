"""Throughput of the inline path and of the engine with 1 and 4 cameras, on the same clip, in one run.

    python bench/engine.py [--frames 96] [--width 640 --height 360] [--imgsz 640]

Prints frames/s (all cameras together) and the ratios against --inline. Also measures whether a
subscriber that sleeps on the tap lowers the engine's throughput.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from anonengine import models
from anonengine.config import CameraConfig, EngineConfig
from anonengine.engine.launcher import Launcher, stage_total
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
    (stage, name), and stats_at_first: as they were when the first frame was written; t_start, t_first, t_last, t_end: perf_counter times of the start, the first and last
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
        written = stage_total(stats, "encode", "frames")
        now = time.perf_counter()
        if written and (not progress or written > progress[-1][1]):
            progress.append((now, written))
        if written > 0 and "t" not in seen:
            seen["t"], seen["n"] = now, written
            seen["stats_first"] = {key: dict(counters) for key, counters in stats.items()}
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
    timed_out = threading.Event()  # not launcher.stop_requested: the launcher's own stop at the end sets that

    def time_out():
        timed_out.set()
        launcher.request_stop()

    if timeout_s is not None:
        timer = threading.Timer(timeout_s, time_out)
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
        "stats_at_first": seen.get("stats_first", {}),
        "t_start": t_start,
        "t_first": t_first,
        "t_last": t_last,
        "t_end": end,
        "stopped": timed_out.is_set(),
        "progress": progress,
    }


def inline_fps(cfg: EngineConfig, frames: int, on_clock=None) -> float:
    """Frames/s of the inline path, its model loaded (and exported for this frame size) beforehand.

    `on_clock()` is called when the clock starts and when it stops (to read CPU time over the same span).
    """
    from anonengine.stages import DetectStage
    from anonengine.video import VideoReader

    first = next(iter(VideoReader(cfg.cameras[0].source))).image
    with DetectStage(cfg.anonymizer) as detect:
        detect.process([first])
        if on_clock:
            on_clock()
        start = time.perf_counter()
        (result,) = run_inline(cfg, detect=detect)
        end = time.perf_counter()
        if on_clock:
            on_clock()
    assert result.frames == frames, f"inline wrote {result.frames} frames"
    return result.frames / (end - start)


class Monitor:
    """Samples the GPU (utilisation, memory) and the CPU time of each engine process every `interval` s."""

    def __init__(self, gpu: bool, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (t, GPU %, GPU MiB used)
        self.cpu: dict[str, list[tuple[float, float]]] = {}  # child name -> [(t, CPU seconds)]
        self.stages: dict[str, str] = {}  # child name -> stage
        self.launcher = None
        self.stop = threading.Event()
        self._gpu = self._gpu_reader() if gpu else None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _gpu_reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)

            def read():
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

            read()
            return read
        except Exception:  # noqa: BLE001 - no NVML: nvidia-smi, slower

            def read():
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "-i",
                        "0",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                util, mem = out.stdout.strip().split(",")[:2]
                return float(util), float(mem)

            return read

    def attach(self, launcher) -> None:
        self.launcher = launcher

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        import psutil

        procs: dict[int, psutil.Process] = {}
        while not self.stop.is_set():
            now = time.perf_counter()
            if self._gpu is not None:
                try:
                    util, mem = self._gpu()
                    self.samples.append((now, util, mem))
                except Exception:  # noqa: BLE001, S110 - a missed sample is no reason to stop measuring
                    pass
            launcher = self.launcher
            for child in list(launcher.children.values()) if launcher is not None else ():
                process = child.process
                if process is None:
                    continue
                try:
                    proc = procs.get(process.pid)
                    if proc is None:
                        proc = procs[process.pid] = psutil.Process(process.pid)
                    times = proc.cpu_times()
                except (psutil.Error, OSError):
                    continue
                key = f"{child.name}#{process.pid}"  # a restarted stage is another process
                self.stages[key] = child.stage
                self.cpu.setdefault(key, []).append((now, times.user + times.system))
            self.stop.wait(self.interval)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()

    def gpu_in(self, t0: float, t1: float) -> tuple[float, float]:
        """Mean GPU utilisation and most memory used over t0..t1 (the nearest sample if none falls inside)."""
        inside = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not inside and self.samples:
            inside = [min(self.samples, key=lambda s: abs(s[0] - (t0 + t1) / 2))[1:]]
        if not inside:
            return float("nan"), float("nan")
        return sum(u for u, _ in inside) / len(inside), max(m for _, m in inside)

    def cores_in(self, t0: float, t1: float) -> dict[str, tuple[float, float, int]]:
        """Per stage: (cores used by all its processes, most by one process, processes) over about t0..t1.

        Each process's CPU time is read at the samples that bracket the window (the last one before t0, the
        first one after t1), so a window shorter than the sampling interval still gets a figure.
        """
        per_stage: dict[str, list[float]] = {}
        for key, series in self.cpu.items():
            before = [s for s in series if s[0] <= t0]
            after = [s for s in series if s[0] >= t1]
            (ta, ca) = before[-1] if before else series[0]
            (tb, cb) = after[0] if after else series[-1]
            if tb - ta < self.interval / 2:
                continue
            per_stage.setdefault(self.stages[key], []).append((cb - ca) / (tb - ta))
        return {stage: (sum(v), max(v), len(v)) for stage, v in per_stage.items()}


def counters_summary(stats: dict) -> dict:
    """The counters that tell what the engine lost or hid, added up over each stage's processes."""
    total: dict[str, int] = {}
    for (stage, _), counters in stats.items():
        for name, value in counters.items():
            total[f"{stage}.{name}"] = total.get(f"{stage}.{name}", 0) + int(value)
    batches = total.get("detect.batches", 0)
    batched = total.get("detect.frames_run", 0)
    lost = {
        k: total.get(k, 0)
        for k in (
            "capture.dropped_busy",
            "capture.dropped_unnumbered",
            "capture.redelivered",
            "composite.obscured",
            "composite.late",
            "detect.frames_failed",
            "detect.frames_stale",
            "composite.stale",
            "encode.stale",
        )
    }
    return {"mean_batch": batched / batches if batches else float("nan"), "lost": lost, "all": total}


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
