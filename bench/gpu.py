"""GPU check: N generated 1080p streams through the engine; aggregate frames/s, GPU use, streams sustained.

    bash bench/gpu.sh                       (a machine with one NVIDIA GPU; about 7 minutes at most)
    python bench/gpu.py --device cpu --size 640x360 --streams 1 2 --frames 20     (a dry run, no GPU)

One generated clip (persons walking over a scene, H.264 at about 4 Mbit/s) is anonymized N times at once
by one engine (anonengine.engine.launcher.Launcher, as `anonengine launch` runs it) for each N in
--streams, then, time allowing, for the counts between the largest N that kept up and the smallest that
did not. Each row: frames/s of all streams together and per stream, counted from when --skip (a fifth) of
the frames were written to the last one (engine start, model loading and the rings' first fill left
out), the GPU's mean utilisation and largest memory use over that window, the CPU cores each stage's
processes used (a stage at about 1.0 per process is one saturated Python thread: the bottleneck), the
detector's mean batch, and what the engine dropped or obscured, which for file sources must be nothing.
A count is sustained when every frame came out anonymized, none dropped, late or obscured, at >= 25
frames/s per stream. The most 1080p25 streams sustained is the largest such N.

--codec auto (default) encodes with h264_nvenc when PyAV has it and a trial encode works, else libx264.
Runs stop being started once --budget-s is spent or the next one is predicted to overrun it, and a run
still going --grace-s after the budget is stopped (reported as incomplete).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("ANONENGINE_LOG_LEVEL", "WARNING")  # the stages' INFO lines: 5 per camera per run
os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no online check, no update check, no auto-install
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

sys.path.insert(0, str(Path(__file__).parent))
from engine import Monitor, config, counters_summary, engine_run  # noqa: E402 - bench/engine.py, beside this file

RATE = 25


def make_clip(out_dir: Path, width: int, height: int, frames: int):
    """The sample scene's frames (anonengine.sample) as a camera would send them: H.264 at CRF 23.

    make_sample writes near-lossless video (CRF 8, preset medium): about 4 times slower to make at
    1080p (0.28 s a frame on 2 cores) and about 100 kB a frame to decode, where a 1080p25 camera sends
    20 to 40; this clip has about 20.
    """
    from anonengine.config import EncoderConfig
    from anonengine.sample import TIME_BASE, render_frames
    from anonengine.video import VideoWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / "clip.mp4"
    writer = VideoWriter(
        video, width, height, Fraction(RATE), TIME_BASE, EncoderConfig(codec="libx264", preset="veryfast", crf=23)
    )
    ticks = int(1 / (RATE * TIME_BASE))
    for i, (image, _, _) in enumerate(render_frames(width, height, frames)):
        writer.write(image, i * ticks)
    writer.close()
    return SimpleNamespace(video=video)


TRIAL = """
import sys
from fractions import Fraction
import numpy as np
from anonengine.config import EncoderConfig
from anonengine.video import VideoWriter
w, h = int(sys.argv[3]), int(sys.argv[4])
writer = VideoWriter(sys.argv[2], w, h, Fraction(25), Fraction(1, 12800), EncoderConfig(codec=sys.argv[1]))
for i in range(10):
    writer.write(np.full((h, w, 3), 16 * i, np.uint8), i * 512)
writer.close()
print("ok")
"""


def trial_encode(codec: str, width: int, height: int, tmp: Path) -> str | None:
    """None when `codec` encodes a few frames through anonengine's VideoWriter, else why not (one line)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", TRIAL, codec, str(tmp / f"trial-{codec}.mp4"), str(width), str(height)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "trial encode timed out"
    if out.returncode == 0 and out.stdout.strip().endswith("ok"):
        return None
    lines = [line for line in (out.stderr or out.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {out.returncode}"


def pick_codec(requested: str, width: int, height: int, tmp: Path) -> str:
    import av

    if requested != "auto":
        print(f"codec: {requested} (as asked)")
        return requested
    if "h264_nvenc" not in av.codecs_available:
        print("codec: libx264 (this PyAV has no h264_nvenc)")
        return "libx264"
    why = trial_encode("h264_nvenc", width, height, tmp)
    if why is None:
        print("codec: h264_nvenc (trial encode worked)")
        return "h264_nvenc"
    print(f"codec: libx264 (h264_nvenc trial encode failed: {why})")
    return "libx264"


def shm_free() -> float:
    """Bytes free in /dev/shm, where the engine's frame rings live."""
    stat = os.statvfs("/dev/shm")
    return stat.f_bavail * stat.f_frsize


def steady_window(run: dict, expected: int, skip: float) -> tuple[float, int, float]:
    """(start time, frames written by then, end time) of the measured window: from when `skip` of all frames
    were written (the rings filled before the first frame came out are behind by then) to the last one.
    Falls back to the first frame written when that leaves less than a second."""
    t1 = run["t_last"]
    for t, written in run["progress"]:
        if written >= skip * expected and t <= t1 - 1.0:
            return t, written, t1
        if written >= skip * expected:
            break
    first = [(t, w) for t, w in run["progress"] if t >= run["t_first"]]
    t0, n0 = first[0] if first else (run["t_first"], 0)
    return t0, n0, t1


def detector_timing(args, width: int, height: int) -> None:
    """The detector alone, in this process: set-up time, then per padded batch size its first and later calls."""
    from anonengine.config import AnonymizerConfig
    from anonengine.detector import PersonDetector
    from anonengine.models import pull

    cfg = AnonymizerConfig()
    cfg.detector.pose_model = str(pull("yolo11n-pose.pt"))
    cfg.detector.device, cfg.detector.backend, cfg.detector.imgsz = args.device, args.backend, args.imgsz
    t = time.perf_counter()
    detector = PersonDetector(cfg, max_batch=args.max_batch)
    print(f"detector: set up (load and warm-up) in {time.perf_counter() - t:.1f} s; backend {detector.backend}, "
          f"half {detector.half}, padded batch sizes {detector.padded_sizes}", flush=True)
    from anonengine.sample import render_frames

    frame = next(iter(render_frames(width, height, 1)))[0]
    for size in detector.padded_sizes or [1]:
        times = []
        for _ in range(6):
            t = time.perf_counter()
            detector.detect([frame] * size)
            times.append(time.perf_counter() - t)
        steady = sorted(times[1:])[len(times[1:]) // 2]
        print(f"detector: batch {size:2d} of {width}x{height}: first call {times[0] * 1000:.0f} ms, then "
              f"{steady * 1000:.1f} ms ({steady / size * 1000:.2f} ms a frame, {size / steady:.0f} frames/s)",
              flush=True)


def decoder_timing(args, clip) -> None:
    """The clip decoded by one capture's reader on the CPU and where `--decoder` says: wall and CPU ms a frame,
    and whether the frames are the same (H.264 decoding is exact); then a portrait phone video (a "rotate 90"
    display matrix) both ways, whose frames must come out upright from either."""
    import cv2
    import numpy as np

    from anonengine.config import SourcesConfig
    from anonengine.sample import write_portrait_video
    from anonengine.video import VideoReader, decoding_device

    device = decoding_device(args.decoder)
    if device == "cpu":
        print(f"decoder: {args.decoder} decodes on the CPU here: nothing to compare", flush=True)
        return
    decoded = {}
    for where in ("cpu", device):
        t, cpu = time.perf_counter(), time.process_time()
        reader = VideoReader(str(clip.video), sources_cfg=SourcesConfig(decoder=where))
        decoded[where] = [f.image for f in reader]
        reader.close()
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        n = len(decoded[where])
        print(f"decoder: {where}: {n} frames, {wall / n * 1000:.1f} ms a frame wall, {cpu / n * 1000:.1f} ms of CPU "
              f"(opening included)", flush=True)
    apart = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(decoded["cpu"], decoded[device]))
    print(f"decoder: {device} against cpu: {len(decoded[device])} against {len(decoded['cpu'])} frames, at most "
          f"{apart} grey levels apart", flush=True)
    frames = [cv2.resize(f, (320, 192), interpolation=cv2.INTER_AREA) for f in decoded["cpu"][:10]]
    path = write_portrait_video(frames, Path(clip.video).with_name("portrait.mp4"), RATE, crf=18)
    for where in ("cpu", device):
        reader = VideoReader(str(path), sources_cfg=SourcesConfig(decoder=where))
        out = [f.image for f in reader]
        reader.close()
        upright = out[0].shape[:2] == (192, 320)
        apart = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames, out)]) if upright else None
        print(f"decoder: portrait phone video on {where}: {out[0].shape[1]}x{out[0].shape[0]}, "
              + (f"upright, {apart:.2f} levels from the frames filmed on average (x264 crf 18)" if upright
                 else "ON ITS SIDE"), flush=True)


def background_timing(args, width: int, height: int, frames: int = 40) -> None:
    """The background model alone, OpenCV against tensors on `--background-device` (a shaking street camera,
    each frame learnt and three person-sized regions drawn back): ms a frame and how far apart they draw."""
    import numpy as np

    from anonengine.background import BackgroundModel
    from anonengine.background_torch import TorchBackgroundModel
    from anonengine.config import BackgroundConfig
    from anonengine.sample import render_frames

    device = args.background_device if args.background_device != "cpu" else args.device
    clips = list(render_frames(width, height, frames, shake=2.0, scene="street"))
    regions = [(round(width * x), round(height * 0.2), round(width * (x + 0.15)), round(height * 0.95))
               for x in (0.1, 0.45, 0.75)]
    models = {"opencv": BackgroundModel(BackgroundConfig()), device: None}
    try:
        models[device] = TorchBackgroundModel(BackgroundConfig(), device=device)
    except Exception as exc:  # noqa: BLE001 - reported, the rest of the check goes on
        print(f"background: tensors on {device} failed: {type(exc).__name__}: {exc}", flush=True)
        return
    drawn: dict[str, list] = {name: [] for name in models}
    for name, model in models.items():
        times = []
        for image, _, persons in clips:
            mask = np.zeros(image.shape[:2], np.uint8)
            for person in persons:
                x0, y0, x1, y1 = (round(v) for v in person["box"])
                mask[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = 255
            t = time.perf_counter()
            model.update(image, mask)
            drawn[name].append([model.render(box) for box in regions])
            times.append(time.perf_counter() - t)
        steady = sorted(times[5:])[len(times[5:]) // 2]
        print(f"background: {name}: {steady * 1000:.1f} ms a {width}x{height} frame (learnt, 3 regions drawn)",
              flush=True)
    apart = [np.abs(a.astype(int) - b).mean() for fa, fb in zip(*drawn.values()) for a, b in zip(fa, fb)]
    print(f"background: {device} against opencv: {np.mean(apart):.3f} grey levels apart on average", flush=True)


def composite_workers(args, streams: int) -> int:
    """--composite-workers, or by default one per stream up to half the cores (a 1080p stream needs most of one)."""
    return args.composite_workers or max(1, min(streams, (os.cpu_count() or 2) // 2))


def measure(args, clip, out: Path, n: int, codec: str, timeout_s: float, gpu: bool) -> dict:
    cfg = config(clip, out / f"n{n}", n, args.imgsz)
    (out / f"n{n}").mkdir(exist_ok=True)
    cfg.anonymizer.detector.device = args.device
    cfg.anonymizer.detector.backend = args.backend
    cfg.anonymizer.background.device = args.background_device
    cfg.sources.decoder = args.decoder
    cfg.encoder.codec = codec
    if args.preset:
        # The fastest preset on either kind of encoder: NVENC names its presets p1 (fastest) to p7.
        cfg.encoder.preset = "p1" if codec.endswith("_nvenc") and args.preset == "ultrafast" else args.preset
    cfg.engine.detect_workers = args.workers
    cfg.engine.composite_workers = composite_workers(args, n)
    cfg.engine.encode_workers = args.encode_workers or cfg.engine.composite_workers
    cfg.engine.max_batch = args.max_batch
    cfg.engine.ring_slots = args.ring_slots
    cfg.engine.stop_timeout_s = 10
    cfg.engine.run_dir = str(out / "run")
    monitor = Monitor(gpu)
    monitor.start()
    error = None
    try:
        run = engine_run(cfg, timeout_s=timeout_s, on_start=monitor.attach)
    except Exception as exc:  # noqa: BLE001 - a failed count is a row of the report, not the end of it
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        run = None
    finally:
        monitor.finish()
    if run is None:
        return {"streams": n, "error": error}
    counters = counters_summary(run["stats"])
    expected = args.frames * n
    t0, n0, t1 = steady_window(run, expected, args.skip)
    util, mem = monitor.gpu_in(t0, t1)
    fps = (run["done"] - n0) / (t1 - t0) if t1 > t0 else 0.0
    clean = (
        run["done"] == expected
        and not run["stopped"]
        and not frames_lost(counters["lost"])
    )
    return {
        "streams": n,
        "fps": fps,
        "per_stream": fps / n,
        "fps_with_stop": run["fps"],
        "gpu_util": util,
        "gpu_mem_mib": mem,
        "done": run["done"],
        "expected": expected,
        "stopped": run["stopped"],
        "clean": clean,
        "startup_s": run["t_first"] - run["t_start"],
        "window_s": t1 - t0,
        "wall_s": run["t_end"] - run["t_start"],
        "cores": monitor.cores_in(t0, t1),
        "mean_batch": counters["mean_batch"],
        "lost": counters["lost"],
        "counters": counters["all"],
    }


def frames_lost(lost: dict) -> int:
    """Frames dropped, obscured, late or failed: a redelivered or stale one is offered again, not lost."""
    return sum(lost[k] for k in ("capture.dropped_busy", "composite.obscured", "composite.late",
                                 "detect.frames_failed"))


def print_row(r: dict, gpu: bool) -> None:
    if "error" in r:
        print(f"{r['streams']:7d}  failed: {r['error']}", flush=True)
        return
    gpu_cols = f"{r['gpu_util']:6.0f} {r['gpu_mem_mib']:7.0f}" if gpu else f"{'-':>6s} {'-':>7s}"
    cores = r["cores"]
    stage_cols = " ".join(
        f"{cores[s][0]:5.2f}" if s in cores else f"{'-':>5s}" for s in ("capture", "detect", "composite", "encode")
    )
    bad = frames_lost(r["lost"])
    status = (
        "ok"
        if r["clean"]
        else (f"INCOMPLETE {r['done']}/{r['expected']}" if r["done"] != r["expected"] or r["stopped"] else "LOST")
    )
    print(
        f"{r['streams']:7d} {r['fps']:9.1f} {r['per_stream']:10.1f} {gpu_cols} {stage_cols} "
        f"{r['mean_batch']:5.1f} {bad:5d} {r['startup_s']:6.1f} {r['window_s']:6.1f}  {status}",
        flush=True,
    )


HEADER = (
    f"{'streams':>7s} {'total fps':>9s} {'per stream':>10s} {'GPU %':>6s} {'GPU MiB':>7s} "
    f"{'cap':>5s} {'det':>5s} {'comp':>5s} {'enc':>5s} {'batch':>5s} {'lost':>5s} {'start':>6s} "
    f"{'window':>6s}  status"
)
LEGEND = (
    "cap/det/comp/enc: CPU cores used by the capture (all cameras), detect (all workers), composite "
    "and encode processes over the measured window; lost: frames dropped, late, obscured or failed "
    "(must be 0); start: s from engine start to the first frame written; window: s measured, from when "
    "--skip of the frames were written to the last"
)


def next_counts(results: dict, target: float) -> int | None:
    """Between the largest count that kept up and the smallest above it that did not, the middle one."""
    good = [n for n, r in results.items() if r.get("clean") and r["per_stream"] >= target]
    bad = [
        n for n, r in results.items() if n > max(good, default=0) and not (r.get("clean") and r["per_stream"] >= target)
    ]
    if not good or not bad:
        return None
    lo, hi = max(good), min(bad)
    return (lo + hi) // 2 if hi - lo > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per stream (the clip's length)")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16],
        help="stream counts to run in order; stops early once more streams add no throughput",
    )
    parser.add_argument("--size", default="1920x1080", help="frame size WxH")
    parser.add_argument("--device", default="cuda:0", help="detector device (cpu for a dry run)")
    parser.add_argument("--backend", default="auto", help="detector backend (auto: TensorRT, else torch fp16)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--background-device", default="cpu",
                        help="the compositors' background.device (cuda:0: the background model on the GPU)")
    parser.add_argument("--decoder", default="auto",
                        help="sources.decoder: auto (NVDEC where FFmpeg opens the GPU, else the CPU), cpu, cuda[:N]")
    parser.add_argument("--codec", default="auto", help="encoder; auto: h264_nvenc if a trial works, else libx264")
    parser.add_argument("--workers", type=int, default=2, help="engine.detect_workers")
    parser.add_argument("--composite-workers", type=int, default=0,
                        help="engine.composite_workers; 0: one per stream, up to half the cores")
    parser.add_argument("--encode-workers", type=int, default=0,
                        help="engine.encode_workers; 0: as many as composite workers")
    parser.add_argument("--preset", default="ultrafast", help="encoder preset ('' for the codec's default)")
    parser.add_argument("--max-batch", type=int, default=16, help="engine.max_batch")
    parser.add_argument("--ring-slots", type=int, default=24, help="engine.ring_slots")
    parser.add_argument("--skip", type=float, default=0.2, help="share of the frames written before measuring")
    parser.add_argument("--budget-s", type=float, default=300, help="start no run that would end after this")
    parser.add_argument("--grace-s", type=float, default=30, help="stop a run this long after the budget")
    parser.add_argument("--max-streams", type=int, default=64, help="doubling past --streams stops here")
    parser.add_argument("--no-refine", action="store_true", help="skip the counts between kept up and not")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-detector-timing", dest="detector_timing", action="store_false",
                        help="skip timing the detector alone before the engine runs")
    args = parser.parse_args()
    started = time.perf_counter()
    width, height = (int(v) for v in args.size.lower().split("x"))
    gpu = args.device.startswith("cuda") or args.device.isdigit()
    label = f"{height}p{RATE}"

    with tempfile.TemporaryDirectory(prefix="gpubench-") as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        clip = make_clip(out / "clip", width, height, args.frames)
        print(
            f"clip: {width}x{height}, {args.frames} frames, {clip.video.stat().st_size / args.frames / 1e3:.0f} kB "
            f"a frame, made in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        if args.detector_timing:
            decoder_timing(args, clip)
            detector_timing(args, width, height)
            background_timing(args, width, height)
        codec = pick_codec(args.codec, width, height, out)
        from anonengine.video import decoding_device

        decoding = decoding_device(args.decoder)
        print(
            f"engine: decoding on {decoding} (sources.decoder {args.decoder}), "
            f"detector {args.device} backend {args.backend} imgsz {args.imgsz}, {args.workers} detect "
            f"worker(s), max_batch {args.max_batch}, ring_slots {args.ring_slots}, encoder {codec} "
            f"{args.preset or ''}, composite workers {args.composite_workers or 'one per stream up to cores/2'}, "
            f"encode workers {args.encode_workers or 'as many'}; {os.cpu_count()} CPUs",
            flush=True,
        )
        print(HEADER, flush=True)
        ring_bytes = 2 * args.ring_slots * (width * height * 3 + 64)  # a stream's capture and composite rings
        results: dict[int, dict] = {}
        skipped: set[int] = set()  # for time or /dev/shm: never asked for again
        queue = list(args.streams)
        refining = False
        while True:
            if not queue and not refining and results:
                top = max(results)
                kept_up = results[top].get("clean") and results[top].get("per_stream", 0) >= RATE
                if kept_up and top * 2 <= args.max_streams and top * 2 not in skipped:
                    queue = [top * 2]  # every count kept up: go on doubling
            if not queue:
                n = None if args.no_refine else next_counts(results, RATE)
                if n is None or n in results or n in skipped:
                    break
                refining = True
                queue = [n]
            n = queue.pop(0)
            if n in results or n in skipped:
                continue
            if n * ring_bytes > 0.8 * shm_free():
                print(
                    f"skipping {n} streams: their frame rings need {n * ring_bytes / 2**30:.1f} GiB of /dev/shm, "
                    f"{shm_free() / 2**30:.1f} free",
                    flush=True,
                )
                skipped.add(n)
                if refining:
                    break
                continue
            left = args.budget_s - (time.perf_counter() - started)
            done_runs = [r for r in results.values() if "fps" in r and r["fps"] > 0]
            if done_runs:
                last = done_runs[-1]
                best = max(r["fps"] for r in done_runs)
                predicted = last["wall_s"] - last["window_s"] + n * args.frames / best  # start, stop, frames
                if predicted > left:
                    print(
                        f"skipping {n} streams: about {predicted:.0f} s needed, {left:.0f} s of the budget left",
                        flush=True,
                    )
                    skipped.add(n)
                    if refining:
                        break
                    continue
            if left <= 0:
                print(f"stopping: the {args.budget_s:.0f} s budget is spent", flush=True)
                break
            r = measure(args, clip, out, n, codec, timeout_s=max(10.0, left + args.grace_s), gpu=gpu)
            results[n] = r
            print_row(r, gpu)
            if "error" in r:
                break
            if not refining and "fps" in r:
                # More streams that add no throughput and already fall short: larger counts would too.
                prev = [results[m] for m in results if m < n and "fps" in results[m]]
                if prev and r["per_stream"] < RATE and r["fps"] < 1.1 * max(p["fps"] for p in prev):
                    print(
                        f"stopping the doubling: {n} streams add no throughput and fall short of {RATE} fps", flush=True
                    )
                    queue = []

        rows = [results[n] for n in sorted(results)]
        print()
        print(f"summary ({width}x{height}, {args.frames} frames a stream, encoder {codec}, device {args.device}):")
        print(HEADER)
        for r in rows:
            print_row(r, gpu)
        print(LEGEND)
        for r in rows:
            if "counters" in r:
                lost = {k: v for k, v in r["lost"].items() if v}
                cores = {s: f"{c[0]:.2f} ({c[2]} procs, most {c[1]:.2f})" for s, c in sorted(r["cores"].items())}
                print(
                    f"  {r['streams']} streams: wall {r['wall_s']:.1f} s, with stop {r['fps_with_stop']:.1f} fps; "
                    f"cores {cores}; nonzero loss counters {lost or 'none'}"
                )
        sustained = max((n for n, r in results.items() if r.get("clean") and r["per_stream"] >= RATE), default=0)
        note = " (the most tried)" if sustained and sustained == max(results) else ""
        print(f"most {label} streams sustained: {sustained}{note}  (total {time.perf_counter() - started:.0f} s)")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "size": [width, height],
                        "frames": args.frames,
                        "codec": codec,
                        "decoding": decoding,
                        "device": args.device,
                        "sustained": sustained,
                        "rows": rows,
                    },
                    indent=1,
                    default=str,
                )
            )


if __name__ == "__main__":
    main()
