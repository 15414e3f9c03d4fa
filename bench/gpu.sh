#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU and no network, about 7 minutes at most, install included:
# installs the missing packages from wheels, prints the machine, then runs bench/gpu.py (N generated
# 1080p streams through the engine: frames/s, GPU use, most 1080p25 streams sustained).
#
#     bash bench/gpu_wheels.sh            # here, once: the wheels into .whl/ (about 42 MB)
#     bash bench/gpu.sh [gpu.py options]  # there, with .whl and models/yolo11n-pose.pt carried
#     bash bench/gpu.sh --background-device cuda:0   # the compositors' background model on the GPU
#
# The full log goes to $OUT/gpu.log, the results to $OUT/gpu.json and py-spy samples of the compositors and
# encoders to $OUT/spy.txt (bench/gpu_profile.sh; GPU_PROFILE=0: none) when $OUT is set. Wheels are
# taken from $WHEEL_DIR (default .whl) into $SITE (default /tmp/site), skipped where every package
# is importable already. GPU_BENCH_TIMEOUT (default 390 s) bounds bench/gpu.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Nothing may reach the network: no Ultralytics online/update checks, no run-time pip installs, no
# settings file in a home folder that may be read-only.
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-/tmp/ultralytics-config}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
LOG=/dev/null
JSON=()
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    LOG="$OUT/gpu.log"
    JSON=(--json "$OUT/gpu.json")
fi

main() {
    local t0=$SECONDS
    if "$PY" -c "import ultralytics, av, zmq, pydantic, setproctitle, msgspec, lap" 2>/dev/null; then
        echo "packages: already importable, nothing installed"
    else
        local wheels="${WHEEL_DIR:-.whl}" site="${SITE:-/tmp/site}"
        if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
            echo "no wheels in $wheels: run bench/gpu_wheels.sh here and carry .whl" >&2
            return 1
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$wheels"/*.whl || return 1
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "packages: installed $(ls "$wheels"/*.whl | wc -l) wheels into $site in $((SECONDS - t0)) s"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # anonengine and services/ from this tree
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
        || echo "nvidia-smi failed"
    echo "CPUs: $(nproc), memory: $(free -g | awk '/^Mem/ {print $2}') GiB"
    # Frame rings live in /dev/shm: 2 x ring_slots x 6 MB per 1080p stream (0.3 GB). A container's
    # default 64 MB would not hold one stream: enlarge it where it is small and we may.
    local shm_gb
    shm_gb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 | awk '{print int($1 / 1048576)}')
    if [ "${shm_gb:-0}" -lt 12 ] && [ "$(id -u)" = 0 ]; then
        mount -o remount,size=40G /dev/shm 2>/dev/null || mount -t tmpfs -o size=40G tmpfs /dev/shm 2>/dev/null \
            || echo "/dev/shm: ${shm_gb} GiB free and cannot be enlarged"
    fi
    df -h /dev/shm /tmp | sed 's/^/  /'
    "$PY" - <<'EOF' || return 1
import sys

import av
import cv2
import numpy
import torch
import ultralytics
import zmq

cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, available {cuda}"
      f"{', ' + torch.cuda.get_device_name(0) if cuda else ''}), cudnn {torch.backends.cudnn.version()}")
print(f"ultralytics {ultralytics.__version__}, av {av.__version__} (h264_nvenc built in: "
      f"{'h264_nvenc' in av.codecs_available}), opencv {cv2.__version__}, numpy {numpy.__version__}, "
      f"pyzmq {zmq.__version__}")
import anonengine.engine.launcher  # noqa: F401 - the engine's imports, before any run
EOF
    ls -l models/yolo11n-pose.pt || return 1
    echo "setup took $((SECONDS - t0)) s"
    local profiler=""
    if [ -n "${OUT:-}" ] && [ "${GPU_PROFILE:-1}" != 0 ]; then
        bash bench/gpu_profile.sh "$OUT/spy.txt" &  # it finds py-spy, or says it did not
        profiler=$!
        echo "py-spy samples of the compositors and encoders: $OUT/spy.txt (python bench/spy_summary.py)"
    fi
    timeout -k 10 "${GPU_BENCH_TIMEOUT:-390}" "$PY" bench/gpu.py "${JSON[@]}" "$@"
    local rc=$?
    [ -n "$profiler" ] && kill "$profiler" 2>/dev/null
    [ $rc -eq 124 ] && echo "bench/gpu.py stopped by its ${GPU_BENCH_TIMEOUT:-390} s timeout"
    echo "gpu.sh: exit $rc after $((SECONDS - t0)) s"
    return $rc
}

main "$@" 2>&1 | tee "$LOG"
