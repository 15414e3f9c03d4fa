#!/usr/bin/env bash
# Samples where the engine's stage processes spend their time while bench/gpu.py runs beside it: every
# PERIOD seconds, py-spy records one process of each of STAGES for SECONDS_EACH seconds (raw collapsed
# stacks, idle frames left out), each record headed by the time and the number of capture processes then
# running (= streams). Everything goes into one file ($1), since the device tool brings back few files.
# bench/gpu.sh starts it when $OUT is set and py-spy is there (GPU_PROFILE=0: not).
#
#     bash bench/gpu_profile.sh "$OUT/spy.txt" &    # py-spy from the carried wheels (bench/gpu_wheels.sh)
#
# Summarise here with: python bench/spy_summary.py spy.txt
set -uo pipefail
OUT_FILE="$1"
PERIOD="${PERIOD:-5}"  # short: a run's measured window lasts 5 to 15 s
STAGES="${STAGES:-composite encode}"  # the CPU stages that limit on a GPU server
SECONDS_EACH="${SECONDS_EACH:-5}"
SPY="${PY_SPY:-$(command -v py-spy || echo "${SITE:-/tmp/site}/bin/py-spy")}"
if [ ! -x "$SPY" ]; then
    echo "gpu_profile: no py-spy at $SPY" >> "$OUT_FILE"
    exit 0
fi
: > "$OUT_FILE"
start=$SECONDS
while true; do
    sleep "$PERIOD"
    streams=$(pgrep -fc 'anonengine-capture' || true)
    [ "${streams:-0}" -gt 0 ] || continue
    for stage in $STAGES; do
        pid=$(pgrep -f "anonengine-$stage" | head -1)
        [ -n "$pid" ] || continue
        tmp=$(mktemp)
        if timeout 30 "$SPY" record --pid "$pid" --duration "$SECONDS_EACH" --rate 100 --format raw \
            --nonblocking --output "$tmp" >/dev/null 2>&1; then
            echo "=== t=$((SECONDS - start)) s, streams $streams, stage $stage, pid $pid" >> "$OUT_FILE"
            cat "$tmp" >> "$OUT_FILE"
        else
            echo "=== t=$((SECONDS - start)) s, streams $streams, stage $stage, pid $pid: py-spy failed" >> "$OUT_FILE"
        fi
        rm -f "$tmp"
    done
done
