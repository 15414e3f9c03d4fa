"""Archive throughput: files per minute for a batch run locally and on a Ray cluster of one and two nodes.

    python bench/archive.py [--files 8] [--frames 48] [--width 640 --height 360]

The clips are the street scene of `anonengine.sample` (real textures cut from Ultralytics' bus.jpg,
persons large and small, a slow pan), each with its own seed. Every run starts from an empty output
folder; the model's exports are made once before (warm caches, as on a cluster that ran before).

On one machine, a cluster's nodes share its cores: the Ray rows are a plumbing check (what the tasks,
retries and shared manifest cost), not a cluster's speed-up. A real cluster of N machines should give
about N times the one-node row, less the driver's share (one manifest line per file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonengine import models
from anonengine.batch import Batch, find_jobs
from anonengine.config import EngineConfig
from anonengine.sample import make_sample


def clips(folder: Path, files: int, frames: int, width: int, height: int) -> Path:
    inputs = folder / "in"
    for i in range(files):
        clip = make_sample(folder / f"clip{i}", width=width, height=height, frames=frames, seed=i, scene="street",
                           pan=0.25)
        target = inputs / f"day{i % 2}" / f"cam{i}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip.video, target)
    return inputs


def config() -> EngineConfig:
    cfg = EngineConfig()
    cfg.anonymizer.detector.pose_model = str(Path(models.pull("yolo11n-pose.pt")).resolve())
    cfg.anonymizer.detector.device = "cpu"
    return cfg


def timed(run, *args, **kwargs) -> tuple[float, int]:
    """Seconds a batch took and the files it did (it must fail none)."""
    started = time.monotonic()
    summary = run(*args, **kwargs)
    assert not summary.failed, summary.failed
    return time.monotonic() - started, summary.done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = clips(tmp, args.files, args.frames, args.width, args.height)
        cfg = config()
        warm = tmp / "warm"
        Batch(cfg, find_jobs(str(next(inputs.rglob("*.mp4"))), warm), warm, progress=False).run()

        out = tmp / "local"
        rows.append(("local batch, one process", *timed(Batch(cfg, find_jobs(str(inputs), out), out,
                                                               progress=False).run)))
        # What a GPU worker does (torch, a file's frames batched), and the same one frame at a time: on a
        # CPU the batch gains little; it is there for a GPU, which a single frame leaves mostly idle.
        for max_batch in (1, cfg.engine.max_batch):
            torch_cfg = cfg.model_copy(deep=True)
            torch_cfg.anonymizer.detector.backend = "torch"
            torch_cfg.engine.max_batch = max_batch
            out = tmp / f"torch{max_batch}"
            rows.append((f"local batch, torch, {max_batch} frame(s) a pass", *timed(
                Batch(torch_cfg, find_jobs(str(inputs), out), out, progress=False).run)))
        import ray
        from ray.cluster_utils import Cluster

        from anonengine.cluster import run_on_ray

        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(nodes):
                cluster.add_node(num_cpus=os.cpu_count() // nodes)
            cluster.wait_for_nodes()
            out = tmp / f"ray{nodes}"
            try:
                rows.append((f"Ray, {nodes} node(s) of {os.cpu_count() // nodes} CPU", *timed(
                    run_on_ray, cfg, find_jobs(str(inputs), out), out, "drop", cluster.address, progress=False)))
            finally:
                ray.shutdown()
                cluster.shutdown()
    print(f"{args.files} street clips of {args.width}x{args.height}, {args.frames} frames each, pose model at "
          f"imgsz {cfg.anonymizer.detector.imgsz}, CPU, {os.cpu_count()} cores")
    print(f"{'how':40} {'seconds':>8} {'files':>6} {'files/min':>10}")
    for how, seconds, files in rows:
        print(f"{how:40} {seconds:8.1f} {files:6d} {60 * files / seconds:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
