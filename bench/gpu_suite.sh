#!/usr/bin/env bash
# Run ON the GPU machine, from the repository root, with .whl carried (see bench/gpu_wheels.sh):
#   run(command="bash bench/gpu_suite.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels into a temporary target, then runs the suite; results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
timeout 480 python3 bench/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
