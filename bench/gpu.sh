#!/usr/bin/env bash
# GPU check for one NVIDIA GPU, within 10 minutes: install, pull the model, run bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
pip install -q -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
anonengine models pull
timeout 570 python bench/gpu.py "$@"
