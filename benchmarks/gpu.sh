#!/usr/bin/env bash
# The prepared GPU benchmark: the ViT-S/16 DINO step (2 x 224 + 10 x 96
# crops, out_dim 65,536) in bfloat16 and float16 on the JAX and PyTorch
# backends (images/s, peak device memory) and the device-side multi-crop
# augmentation rate, on one NVIDIA GPU, in at most 8 minutes. Needs keras,
# numpy, absl-py and JAX and/or PyTorch with CUDA; not TensorFlow.
#
#   bash benchmarks/gpu.sh                       # writes runs/gpu_bench/
#   bash benchmarks/gpu.sh --backends=torch      # other gpu_bench.py flags
#   bash benchmarks/gpu.sh --smoke               # tiny, on the CPU
#
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ " $* " != *" --smoke "* ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU visible (nvidia-smi -L failed);" \
    "run with --smoke for the CPU check." >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# 8 minutes for everything; the script shares 470 s among its jobs and
# this outer limit only catches a hang.
exec timeout 480 "$PYTHON" benchmarks/gpu_bench.py "$@"
