#!/usr/bin/env bash
# On the GPU machine (device tool, carry .gpu made by benchmarks/gpu_prepare.sh): install the carried
# wheels beside the image's torch, then every GPU measurement in one go. Back under $OUT (the tool returns
# at most 8 files): summary.md, summary.json, gpu.log, nvidia-smi.csv and every step's log and run in logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
work=/tmp/gpu-run
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv"
python3 benchmarks/gpu.py --data .gpu/data --out "$work" "$@" 2>&1 | tee "$OUT/gpu.log"
cp "$work"/summary.* "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" --exclude='*.pt' -C "$work" .
