"""End-to-end speed on a 720p generated clip, in one run: the seed's algorithm, --inline and the engine, per
backend and detector input size; the 720p25 cameras the engine sustains; memory per camera.

    python bench/perf.py [--frames 200] [--width 1280 --height 720] [--quick] [--clip street|studio]
    python bench/perf.py --wall [--frames 200] [--rounds 3]    # as a user times it: whole commands, start-up included

The clip (`--clip street`, the default): a street with real textures (brick, windows, a bus, cobbles
from bus.jpg), five persons at once: one filling the frame (95% of its height), two walking, two small
ones far away (20% and 14% of the height), one standing; the camera pans slowly (15% of the width over
the clip) and shakes by up to 1.5 px a frame. `studio` is the older, generated scene, persons only.

--wall: each command (`anonengine run`, with its flags) timed as a user would, from launch to exit,
with warm caches (the model's exports made by an untimed run first): frames/s = frames / wall time,
first frame = launch to the first frame on disk (its metadata record; a file's frames wait for the 50
after them, `--future-frames 0` shows the start-up alone); the seed's algorithm likewise, from its
start (models loaded inside) to its last frame written. With `--rounds N` every command runs N times, the
rounds in alternating order, and the table gives medians, the wall times' spread, and each process's CPU
time summed by stage (the command, the launcher and the fork server are "other").

The seed's algorithm: two PyTorch models per frame (a detection model for boxes and the pose model),
float32 compositing at full resolution, one process. Offline, no plain detection weights can be had,
so the pose model stands in for the detection model (same size class: yolo11n).

frames/s count from the first frame to the last written, model loading (and a backend's one-time export
or INT8 calibration) excluded. CPU ms/frame: CPU time of every thread (inline) or every engine process
(engine) over the same span, per frame. Every row uses the bbox method, the default 8-frame look-ahead,
and the x264 preset `superfast` (the default) unless the row says another. Sustained cameras: N copies of the clip
replayed as live 25 fps cameras (`live: true`); a count is sustained when no frame is dropped, late or
obscured. Memory: the engine's processes' proportional set size (PSS: shared memory counted once), at
its peak, for 1 camera and for the most cameras run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine import Monitor, config, counters_summary, engine_run, inline_fps  # noqa: E402 - bench/engine.py

from anonengine import models  # noqa: E402
from anonengine.config import AnonymizerConfig  # noqa: E402
from anonengine.sample import make_sample  # noqa: E402
from anonengine.video import VideoReader, VideoWriter  # noqa: E402

LIVE_FPS = 25
STREET_ACTORS = (
    ("zidane", 0.95, (0.30, 0.50), (0.42, 0.50)),  # fills the frame
    ("bus_left", 0.60, (0.05, 0.55), (0.85, 0.55)),
    ("bus_right", 0.50, (0.72, 0.58), (0.72, 0.58)),  # stands
    ("bus_left", 0.20, (0.95, 0.45), (0.45, 0.45)),  # far away
    ("zidane", 0.14, (0.60, 0.42), (0.15, 0.42)),
)


def machine() -> str:
    """The CPU cores this runs on and their model: 2-core machines of this project's differed 2.5-fold (one
    inference took 165 ms on one core of a 2-GHz AMD EPYC with AVX2, 65 ms on another machine's)."""
    import os

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    simd = next((f for f in ("avx512f", "avx2") if f" {f}" in info), "no AVX2")
    return f"{len(os.sched_getaffinity(0))} CPU cores ({model}, {simd})"


def make_clip(out: Path, width: int, height: int, frames: int, kind: str):
    if kind == "studio":
        return make_sample(out, width, height, frames)
    return make_sample(out, width, height, frames, actors=STREET_ACTORS, scene="street", pan=0.15, shake=1.5)


STAGES = ("capture", "detect", "composite", "encode")


def wall_run(clip, out: Path, name: str, *flags: str) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, seconds to the first frame on disk, CPU seconds per stage) of `anonengine run` on the clip.

    CPU: each process's own user and system time, last read just before it exits, summed by what its title
    says it is (`anonengine-composite[...]`...); "other" is the command, the launcher and the fork server."""
    import os
    import subprocess

    import psutil

    from anonengine.recording import segments_folder

    video, metadata = out / f"{name}.mp4", out / f"{name}.jsonl"
    env = dict(os.environ, ANONENGINE_MODELS=str(models.pull("yolo11n-pose.pt").parent))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "anonengine.cli", "run", "--video-source", str(clip.video),
                             "--output-video", str(video), "--metadata", str(metadata), "--quiet", *flags],
                            env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (stage, CPU seconds so far)
    command = psutil.Process(proc.pid)
    while proc.poll() is None:
        if first is None:
            partial = [metadata.with_suffix(".jsonl.partial"), *segments_folder(video, keep=False).glob("*.jsonl")]
            if any(p.exists() and p.stat().st_size for p in partial):
                first = time.perf_counter() - started
        try:
            processes = [command, *command.children(recursive=True)]
        except psutil.Error:
            processes = []
        for process in processes:
            try:
                with process.oneshot():
                    times, title = process.cpu_times(), " ".join(process.cmdline())
            except psutil.Error:
                continue
            stage = next((s for s in STAGES if f"anonengine-{s}[" in title), None)
            # A stage is forked from the fork server under its title, and renames itself once it runs.
            stage = stage or cpu.get(process.pid, ("other", 0.0))[0]
            cpu[process.pid] = (stage, times.user + times.system)
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}: {proc.stderr.read()}")
    per_stage = dict.fromkeys((*STAGES, "other"), 0.0)
    for stage, seconds in cpu.values():
        per_stage[stage] += seconds
    return wall, first if first is not None else wall, per_stage


WALL_ROWS = (
    ("anonengine run (defaults: adaptive stride 3, superfast)", ()),
    ("anonengine run --stride 1", ("--stride", "1")),
    ("anonengine run --stride 2", ("--stride", "2")),
    ("anonengine run --inline", ("--inline",)),
    ("anonengine run --future-frames 0", ("--future-frames", "0")),
    ("anonengine run --resample linear", ("--resample", "linear")),
    ("anonengine run --preset veryfast", ("--preset", "veryfast")),
    ("anonengine run --int8", ("--int8",)),
    ("anonengine run --int8 --preset ultrafast", ("--int8", "--preset", "ultrafast")),
)


def wall_table(clip, out: Path, frames: int, rounds: int) -> None:
    """Every command `rounds` times, the rounds alternating their order (runs here drift and vary by 5 to 10%):
    medians, and the spread of the wall times."""
    import statistics

    # Warm caches, as a user's second run has them: the OpenVINO export and the INT8 model of this
    # input shape are made once (tens of seconds) and kept beside the weights.
    info = VideoReader(str(clip.video)).info
    warm = make_sample(out / "warm", info.width, info.height, 3)
    for flags in ((), ("--int8",)):
        wall_run(warm, out, "warm", *flags)
    # Untimed, on the clip itself: the first engine command after the seed's took about 20% longer than the
    # very same command later in the run (why was not found).
    wall_run(clip, out, "warm")
    seed_walls: list[float] = []
    runs: dict[str, list] = {name: [] for name, _ in WALL_ROWS}
    for round_ in range(rounds):
        started = time.perf_counter()
        seed_fps(clip, out, 640)
        seed_walls.append(time.perf_counter() - started)
        for name, flags in WALL_ROWS if round_ % 2 == 0 else WALL_ROWS[::-1]:
            runs[name].append(wall_run(clip, out, "run", *flags))
    seed_wall = statistics.median(seed_walls)
    print(f"{rounds} rounds; medians; wall spread = the fastest and slowest run; CPU s per process")
    print(f"{'command':56s} {'wall s':>6s} {'spread':>10s} {'frames/s':>8s} {'vs seed':>7s} {'first s':>7s} "
          f"{'CPU s':>6s}  " + " ".join(f"{s[:7]:>7s}" for s in (*STAGES, "other")))
    print(f"{'seed algorithm (torch x2, float32)':56s} {seed_wall:6.1f} "
          f"{min(seed_walls):4.1f}-{max(seed_walls):4.1f} {frames / seed_wall:8.1f} {1:7.2f}")
    for name, results in runs.items():
        walls = [wall for wall, _, _ in results]
        wall = statistics.median(walls)
        first = statistics.median(f for _, f, _ in results)
        stage_cpu = {s: statistics.median(c[s] for _, _, c in results) for s in (*STAGES, "other")}
        total = statistics.median(sum(c.values()) for _, _, c in results)
        print(f"{name:56s} {wall:6.2f} {min(walls):4.1f}-{max(walls):4.1f} {frames / wall:8.1f} "
              f"{seed_wall / wall:7.2f} {first:7.1f} {total:6.1f}  "
              + " ".join(f"{stage_cpu[s]:7.2f}" for s in (*STAGES, "other")))


def seed_fps(clip, out: Path, imgsz: int) -> tuple[float, float]:
    """The seed: per frame, a box model and a pose model in PyTorch, float32 blend, one process."""
    from ultralytics import YOLO

    weights = str(models.pull("yolo11n-pose.pt"))
    box_model, pose_model = YOLO(weights), YOLO(weights)
    reader = VideoReader(str(clip.video))
    info = reader.info
    writer = VideoWriter(out / "seed.mp4", info.width, info.height, info.rate, info.time_base)
    background = None
    start = cpu0 = None
    n = 0
    for frame in reader:
        image = frame.image
        boxes = box_model.predict(image, imgsz=imgsz, classes=[0], verbose=False)[0].boxes.xyxy.numpy()
        pose_model.predict(image, imgsz=imgsz, verbose=False)
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
        if start is None:  # after the first frame: models loaded
            start, cpu0 = time.perf_counter(), process_cpu()
        else:
            n += 1
    writer.close()
    return n / (time.perf_counter() - start), (process_cpu() - cpu0) / n * 1000


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inline_row(cfg, frames: int) -> tuple[float, float]:
    cpu = []
    fps = inline_fps(cfg, frames, on_clock=lambda: cpu.append(process_cpu()))
    return fps, (cpu[1] - cpu[0]) / frames * 1000


def engine_row(cfg, frames: int, live: bool = False) -> tuple[float, float, dict]:
    """frames/s, CPU ms/frame and {lost, pss_mb}. Live cameras: frames lost once the first was written
    (a live camera drops what comes while the detector loads its model: that is start-up, not load)."""
    monitor = Monitor(gpu=False)
    memory = PeakMemory()
    monitor.start()
    memory.start()
    try:
        run = engine_run(cfg, on_start=lambda launcher: (monitor.attach(launcher), memory.attach(launcher)))
    finally:
        monitor.finish()
        memory.finish()
    expected = frames * len(cfg.cameras)
    assert live or run["done"] == expected, f"engine wrote {run['done']} of {expected} frames"
    cores = sum(c for c, _, _ in monitor.cores_in(run["t_first"], run["t_last"]).values())
    fps = run["fps_steady"]
    lost = lost_frames(run["stats"]) - (lost_frames(run["stats_at_first"]) if live else 0)
    return fps, cores * 1000 / fps if fps else float("nan"), {"lost": lost, "pss_mb": memory.peak_mb}


def lost_frames(stats: dict) -> int:
    """Frames dropped, late, obscured or failed (a redelivered frame is not lost)."""
    return sum(v for k, v in counters_summary(stats)["lost"].items() if k != "capture.redelivered")


class PeakMemory:
    """Largest sum of the engine processes' PSS, sampled every second."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.launcher = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def attach(self, launcher) -> None:
        self.launcher = launcher

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            if self.launcher is None:
                continue
            total_kb = 0
            for child in list(self.launcher.children.values()):
                total_kb += pss_kb(child.process.pid)
            self.peak_mb = max(self.peak_mb, total_kb / 1024)


def pss_kb(pid: int) -> int:
    """A process's PSS from the kernel's own sum (psutil parses the whole smaps: CPU enough to skew a run)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def fast(cfg, imgsz: int, int8: bool = True, stride: int = 1):
    """The CPU real-time settings: OpenVINO INT8, x264 ultrafast."""
    cfg.anonymizer.detector.imgsz = imgsz
    cfg.anonymizer.detector.int8 = int8
    cfg.anonymizer.detector.stride = stride
    cfg.encoder.preset = "ultrafast"
    return cfg


def sustained(clip, out: Path, frames: int, imgsz: int, most: int) -> tuple[int, list]:
    """The most live 720p25 cameras (N copies of the clip) run with nothing dropped, late or obscured."""
    best, tried = 0, []
    for n in range(1, most + 1):
        cfg = fast(config(clip, out, n, imgsz), imgsz)
        for camera in cfg.cameras:
            camera.live = True
        fps, _, extra = engine_row(cfg, frames, live=True)
        tried.append((n, fps, extra))
        if extra["lost"]:
            break
        best = n
    return best, tried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--quick", action="store_true", help="skip the torch and FP32 rows")
    parser.add_argument("--most-cameras", type=int, default=4, help="sustained cameras: try up to this many")
    parser.add_argument("--clip", choices=["street", "studio"], default="street")
    parser.add_argument("--wall", action="store_true", help="only whole commands timed as a user would")
    parser.add_argument("--rounds", type=int, default=1, help="--wall: run every command this many times")
    args = parser.parse_args()
    if args.wall:
        with tempfile.TemporaryDirectory() as tmp:
            clip = make_clip(Path(tmp) / "clip", args.width, args.height, args.frames, args.clip)
            print(f"{args.clip} clip {args.width}x{args.height}, {args.frames} frames, {machine()}")
            wall_table(clip, Path(tmp), args.frames, args.rounds)
        return
    rows = []

    def row(name, imgsz, fps, cpu_ms):
        rows.append((name, imgsz, fps, cpu_ms))
        print(f"  {name}, imgsz {imgsz}: {fps:.1f} frames/s, {cpu_ms:.0f} CPU ms/frame", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        clip = make_clip(out / "clip", args.width, args.height, args.frames, args.clip)
        seed, seed_cpu = seed_fps(clip, out, 640)
        row("seed algorithm (torch x2, float32)", 640, seed, seed_cpu)
        backends = [("openvino", False), ("openvino", True)] if args.quick else [
            ("torch", False), ("openvino", False), ("openvino", True)]
        for backend, int8 in backends:
            for imgsz in (640, 320):
                cfg = config(clip, out, 1, imgsz)
                cfg.anonymizer.detector.backend = backend
                cfg.anonymizer.detector.int8 = int8
                label = f"{backend}{' INT8' if int8 else ''}"
                row(f"--inline, {label}", imgsz, *inline_row(cfg, args.frames))
                if backend != "torch":
                    row(f"engine, {label}", imgsz, *engine_row(cfg, args.frames)[:2])
        singles = {}
        for imgsz in (640, 320):
            row("--inline, openvino INT8, ultrafast", imgsz, *inline_row(fast(config(clip, out, 1, imgsz), imgsz),
                                                                          args.frames))
            fps, cpu_ms, _ = engine_row(fast(config(clip, out, 1, imgsz), imgsz), args.frames)
            singles[imgsz] = fps
            row("engine, openvino INT8, ultrafast", imgsz, fps, cpu_ms)
            row("engine, openvino INT8, ultrafast, stride 2", imgsz,
                *engine_row(fast(config(clip, out, 1, imgsz), imgsz, stride=2), args.frames)[:2])
        three, three_cpu, _ = engine_row(fast(config(clip, out, 3, 320), 320), args.frames)
        row("engine, openvino INT8, ultrafast, 3 cameras (total)", 320, three, three_cpu)
        live = {imgsz: sustained(clip, out, args.frames, imgsz, args.most_cameras) for imgsz in (640, 320)}

    print()
    print(f"{args.clip} clip {args.width}x{args.height}, {args.frames} frames, bbox method, "
          f"{AnonymizerConfig().hold.lookahead_frames}-frame look-ahead, {machine()}")
    print(f"{'path':52s} {'imgsz':>5s} {'frames/s':>9s} {'CPU ms/frame':>12s} {'vs seed':>8s}")
    for name, imgsz, fps, cpu_ms in rows:
        print(f"{name:52s} {imgsz:5d} {fps:9.1f} {cpu_ms:12.0f} {fps / seed:8.2f}")
    print(f"3 cameras at 320 against 1 camera at 320 (engine, total frames/s): {three / singles[320]:.2f}x")
    for imgsz, (best, tried) in live.items():
        runs = ", ".join(f"{n}: {fps:.1f} frames/s, {extra['lost']} lost, {extra['pss_mb']:.0f} MB"
                         for n, fps, extra in tried)
        print(f"live 720p25 cameras sustained, INT8 ultrafast, imgsz {imgsz}: {best}  ({runs})")
    (_, _, one), (n_most, _, most) = live[320][1][0], live[320][1][-1]
    per_camera = (most["pss_mb"] - one["pss_mb"]) / (n_most - 1) if n_most > 1 else float("nan")
    print(f"memory (PSS of all engine processes): {one['pss_mb']:.0f} MB with 1 camera; "
          f"{per_camera:.0f} MB per camera added")


if __name__ == "__main__":
    main()
