"""Soak: live cameras for a long time; resident memory, open file descriptors and shared memory sampled
every minute must stay flat. Not part of the test suite (it runs for half an hour).

    python bench/soak.py [--minutes 30] [--cameras 2] [--imgsz 320]

Each camera is an RTSP stream from GStreamer's server on 127.0.0.1 (tests/rtsp_server.py, Debian's
python3-gi and GStreamer packages) playing a 60 s generated clip; at the clip's end the stream ends and
the camera reconnects, so the soak also goes through a reconnection a minute per camera. The engine
runs as `anonengine launch` with its outputs in a temporary folder. Prints one line per minute and a
verdict: each figure's growth from the second sample to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import stage_pids  # noqa: E402

from anonengine import models  # noqa: E402
from anonengine.config import CameraConfig, EngineConfig  # noqa: E402
from anonengine.sample import make_sample  # noqa: E402
from anonengine.shm import instance_segments  # noqa: E402


def recordings_mb(work: Path) -> float:
    """What the cameras' segments take on disk: kept (cam0/) or joined at the end (.cam0.mp4.segments/)."""
    total = 0
    for path in [*work.glob("cam*/*"), *work.glob(".cam*.segments/*")]:
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # removed by retention meanwhile
            pass
    return round(total / 1e6, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(pids: list[int], instance: str) -> dict:
    rss = fds = 0
    for pid in pids:
        try:
            rss += int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if line.startswith("VmRSS")).split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            pass
    shm = sum((Path("/dev/shm") / name).stat().st_size for name in instance_segments(instance))
    return {"rss_mb": rss / 1024, "fds": fds, "shm_mb": shm / 2**20, "processes": len(pids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--keep-segments", action="store_true",
                        help="record as an NVR: 20 s segments kept, at most 20 MB a camera (retention)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anonengine-soak-"))
    clip = make_sample(work / "clip", width=640, height=360, frames=1500)
    servers, cameras = [], []
    for i in range(args.cameras):
        port = free_port()
        server = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"), "--port", str(port),
                                   "--file", str(clip.video)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        servers.append(server)
        cameras.append(CameraConfig(name=f"cam{i}", source=f"rtsp://127.0.0.1:{port}/cam",
                                    output=str(work / f"cam{i}.mp4")))
    cfg = EngineConfig(cameras=cameras)
    cfg.anonymizer.detector.imgsz = args.imgsz
    cfg.anonymizer.detector.pose_model = str(models.pull("yolo11n-pose.pt"))
    cfg.engine.run_dir, cfg.tap.endpoint = str(work / "run"), ""
    if args.keep_segments:
        cfg.encoder.segment_s, cfg.encoder.keep_segments, cfg.encoder.retain_gb = 20, True, 0.02
    config = work / "engine.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    engine = subprocess.Popen([sys.executable, "-m", "anonengine.cli", "launch", str(config)],
                              stderr=open(work / "engine.log", "w"), start_new_session=True)
    instance = f"p{engine.pid}"
    samples = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < args.minutes * 60 and engine.poll() is None:
            time.sleep(60)
            pids = [engine.pid, *stage_pids(instance)]
            status = subprocess.run([sys.executable, "-m", "anonengine.cli", "status", "--run-dir",
                                     str(work / "run")], capture_output=True, text=True, timeout=30)
            stats = json.loads(status.stdout)["stats"] if status.returncode == 0 else {}
            now = {**sample(pids, instance), "minute": round((time.monotonic() - started) / 60, 1),
                   "frames_out": sum(v.get("frames", 0) for k, v in stats.items() if k.startswith("encode")),
                   "reconnects": sum(v.get("reconnects", 0) for k, v in stats.items() if k.startswith("capture")),
                   "recordings_mb": recordings_mb(work)}
            samples.append(now)
            print(json.dumps(now), flush=True)
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(60)
        for server in servers:
            server.terminate()
            server.wait(10)
    if len(samples) < 3:
        print("too short to judge: at least 3 minutes")
        return 1
    first, last = samples[1], samples[-1]
    growth = {k: round(last[k] - first[k], 1) for k in ("rss_mb", "fds", "shm_mb", "processes", "recordings_mb")}
    print(f"growth from minute {first['minute']} to {last['minute']} (machine: {os.cpu_count()} cores, "
          f"{args.cameras} RTSP cameras 640x360 at 25 fps, imgsz {args.imgsz}): {json.dumps(growth)}")
    print(f"engine log: {work / 'engine.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
