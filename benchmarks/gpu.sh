#!/usr/bin/env bash
# Every GPU measurement of issue 22 in one call of at most 8 minutes on one NVIDIA GPU; prints one table
# (benchmarks/bench_gpu.py: the many-model step, lenet train, sweep and reproduce, each with its goal).
# Run it from anywhere (relative paths in its flags are taken from the repository root):
#     bash benchmarks/gpu.sh [--data-dir DIR] [--out FILE.md] [other bench_gpu.py flags]
# Python: $PYTHON if set, else the first of .venv/bin/python, python3 whose torch sees a CUDA device; failing
# that, a fresh .venv-gpu with torch from PyPI, only where PyPI answers. lenet is imported from src/ (no
# install); it needs numpy, safetensors and tqdm next to torch, and triton for the fused step.
# MNIST: --data-dir DIR, else $LENET_DATA_DIR, else data/mnist in the repository if there, else
# ~/.cache/lenet/mnist (the four IDX files, raw or .gz).
# $OUT set (a device run's output folder) and no --out given: the table also goes to $OUT/gpu.md, its raw
# numbers to $OUT/gpu.json and every part's output to $OUT/gpu-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
pypi_answers() { python3 -c 'import urllib.request as u; u.urlopen("https://pypi.org/simple/pip/", timeout=5)' \
  >/dev/null 2>&1; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null && has_cuda_torch "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then
  command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA driver (nvidia-smi) on this machine" >&2; exit 1; }
  pypi_answers || {
    echo "gpu.sh: no python whose torch sees a CUDA device, and no network to install one; set PYTHON" >&2
    exit 1
  }
  echo "gpu.sh: no python with CUDA torch found; creating .venv-gpu from PyPI" >&2
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install --quiet torch==2.13.0 numpy safetensors tqdm
  PY=.venv-gpu/bin/python
  has_cuda_torch "$PY" || { echo "gpu.sh: torch in .venv-gpu sees no CUDA device" >&2; exit 1; }
fi
"$PY" -c 'import numpy, safetensors, tqdm' || { echo "gpu.sh: $PY lacks numpy/safetensors/tqdm" >&2; exit 1; }

if [ -z "${LENET_DATA_DIR:-}" ] && [ -d data/mnist ]; then export LENET_DATA_DIR="$PWD/data/mnist"; fi
args=("$@")
if [ -n "${OUT:-}" ] && [[ " $* " != *" --out "* && " $* " != *" --out="* ]]; then
  args+=(--out "$OUT/gpu.md")
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
exec "$PY" benchmarks/bench_gpu.py ${args[@]+"${args[@]}"}
