#!/usr/bin/env bash
# Every GPU measurement of the seed protocol in one call (a few minutes on one NVIDIA GPU); prints a table.
# Run from the repository root:
#     bash benchmarks/gpu.sh [--data-dir DIR] [other bench_gpu.py flags]
# Python: $PYTHON if set, else the first of .venv/bin/python, python3 whose torch sees a CUDA device;
# failing that, a fresh .venv-gpu with torch==2.13.0 from PyPI (a CUDA build on Linux; needs the network).
# lenet is imported from src/ (no install needed); it needs numpy, safetensors and tqdm next to torch.
# MNIST: --data-dir DIR, else $LENET_DATA_DIR, else ~/.cache/lenet/mnist (the four IDX files, raw or .gz).
set -euo pipefail
cd "$(dirname "$0")/.."

has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null && has_cuda_torch "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ]; then
  command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA driver (nvidia-smi) on this machine" >&2; exit 1; }
  echo "gpu.sh: no python with CUDA torch found; creating .venv-gpu (needs PyPI)" >&2
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install --quiet torch==2.13.0 numpy safetensors tqdm
  PY=.venv-gpu/bin/python
  has_cuda_torch "$PY" || { echo "gpu.sh: torch in .venv-gpu sees no CUDA device" >&2; exit 1; }
fi
"$PY" -c 'import numpy, safetensors, tqdm' || { echo "gpu.sh: $PY lacks numpy/safetensors/tqdm" >&2; exit 1; }

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch; print("python", __import__("sys").version.split()[0], "torch", torch.__version__)'
exec "$PY" benchmarks/bench_gpu.py "$@"
