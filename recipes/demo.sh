#!/usr/bin/env bash
# The README's first command: installs keras_dino into .venv (PyTorch
# backend, the fastest on CPU, with bfloat16 mixed precision where the CPU
# has bfloat16 matrix instructions; TensorFlow for the tf.data pipeline)
# and runs recipes/demo.py: a short DINO pretraining on the CIFAR-10 sample
# in recipes/data, then k-NN accuracy of the trained teacher next to the
# same network at random initialisation.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA one.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[demo]"
export KERAS_BACKEND="${KERAS_BACKEND:-torch}" TF_CPP_MIN_LOG_LEVEL=3
"$venv/bin/python" recipes/demo.py --output_dir="${OUTPUT_DIR:-runs/demo}" "$@"
