"""GPU check: N generated 1080p streams through the engine; aggregate frames/s, GPU use, streams sustained.

    bash bench/gpu.sh   (a machine with one NVIDIA GPU; about 10 minutes at most)

For each N in --streams (doubling), the engine anonymizes N copies of a generated 1080p clip at once
(backend auto: TensorRT where installed, else half-precision torch; several detector workers batch
across cameras) and reports frames/s in total, per stream, and the GPU's mean utilisation sampled by
nvidia-smi. The most 1080p25 streams sustained is the largest N whose per-stream rate is >= 25.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine import config, engine_fps  # noqa: E402

from anonengine.sample import make_sample  # noqa: E402


def gpu_utilisation(samples: list, stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            samples.append(float(out.stdout.split()[0]))
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting larger runs after this")
    args = parser.parse_args()
    started = time.monotonic()
    sustained = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        clip = make_sample(out / "clip", 1920, 1080, args.frames)
        print(f"{'streams':>7s} {'total fps':>9s} {'per stream':>10s} {'GPU %':>6s}", flush=True)
        for n in args.streams:
            if time.monotonic() - started > args.budget_s:
                print(f"stopping: {args.budget_s:.0f} s budget spent")
                break
            cfg = config(clip, out, n, 640)
            cfg.anonymizer.detector.device = "cuda:0"
            cfg.engine.detect_workers = args.workers
            cfg.engine.max_batch = 16
            cfg.engine.ring_slots = 24
            samples: list = []
            stop = threading.Event()
            sampler = threading.Thread(target=gpu_utilisation, args=(samples, stop), daemon=True)
            sampler.start()
            fps = engine_fps(cfg, args.frames)
            stop.set()
            sampler.join()
            util = sum(samples) / len(samples) if samples else float("nan")
            print(f"{n:7d} {fps:9.1f} {fps / n:10.1f} {util:6.0f}", flush=True)
            if fps / n >= 25:
                sustained = n
    print(f"most 1080p25 streams sustained: {sustained}")


if __name__ == "__main__":
    main()
