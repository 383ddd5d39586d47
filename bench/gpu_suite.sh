#!/usr/bin/env bash
# The GPU check and benchmark suite (bench/gpu_suite.py) on one CUDA GPU.
#
#   bash bench/gpu_suite.sh [--out DIR] [--wheels DIR] [--layers N] [--preset P] [--micro-batch M]
#
# Needs a Python environment with a CUDA build of torch and llada-ds installed into it
# (pip install -e '.[gpu]' from the repository root; DeepSpeed comes with the package).
# Set PYTHON to choose the interpreter (default: python3).
#
#   --out DIR     where the results go (default: gpu_results in the current directory):
#                 gpu_results.txt (the table), gpu_results.json (every figure), gpu_suite.log
#                 (the full output) and nvidia_smi.txt (the GPU and driver).
#   --wheels DIR  for a GPU node without internet access: install the wheels in DIR (downloaded on
#                 another machine with `pip download`, see bench/README.md) offline, without
#                 resolving dependencies, into a temporary directory that is on PYTHONPATH for this
#                 run only and deleted afterwards. The Python environment itself is not changed.
# Every other option is passed to bench/gpu_suite.py (see `python3 bench/gpu_suite.py --help`);
# --layers N runs the model at depth N when the full preset does not fit in memory, and --tiny runs
# a CPU-sized configuration (no GPU needed) to check the suite and this script themselves.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
out=gpu_results
wheels=
tiny=0
args=()

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "--out needs a directory" >&2; exit 2; }; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --wheels) [ $# -ge 2 ] || { echo "--wheels needs a directory" >&2; exit 2; }; wheels=$2; shift 2 ;;
    --wheels=*) wheels=${1#--wheels=}; shift ;;
    -h|--help) usage; exit 0 ;;
    --tiny) tiny=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$wheels" ]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  shopt -u nullglob
  if [ ${#files[@]} -eq 0 ]; then
    echo "--wheels $wheels: no .whl files there" >&2
    exit 2
  fi
  site=$(mktemp -d "${TMPDIR:-/tmp}/llada-ds-gpu-suite.XXXXXX")
  trap 'rm -rf "$site"' EXIT
  echo "installing ${#files[@]} wheels from $wheels into $site (offline, this run only)"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${files[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$tiny" = 0 ] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "torch in $("$python" -c 'import sys; print(sys.prefix)' 2>/dev/null || echo "$python") sees no CUDA GPU:" \
       "run this on a GPU machine, with a CUDA build of torch (or add --tiny to check the suite on a CPU)" >&2
  exit 1
fi

mkdir -p "$out"
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt" ||
    echo "nvidia-smi failed; the suite runs anyway" >&2
fi
"$python" "$here/gpu_suite.py" --out "$out" ${args[@]+"${args[@]}"} 2>&1 | tee "$out/gpu_suite.log"
