#!/usr/bin/env bash
# One prepared GPU check (issue "Paper scale, part 1"): aptp, norm and dense_finetune on CUDA in bf16
# under ZeRO-2 and ZeRO-3 on an SD 2.1-shaped pipeline; prints s/step and peak GPU memory.
# Usage on a GPU machine, from the repository root (installs into .venv-gpu unless PYTHON is set):
#   benchmarks/gpu_check.sh [--only aptp,norm,dense_finetune] [--stages 2,3]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if python3 -c "import torch, deepspeed, diffusers, prunekit" 2>/dev/null; then
    PYTHON=python3
  else
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q torch
    .venv-gpu/bin/pip install -q -e .
    PYTHON=.venv-gpu/bin/python
  fi
fi
export HF_HUB_OFFLINE=1
exec "$PYTHON" benchmarks/gpu_check.py --workdir "${OUT:-$(mktemp -d)}/gpu-check" "$@"
