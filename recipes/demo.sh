#!/usr/bin/env bash
# The README's first command: installs keras_dino (TensorFlow backend, the
# fastest on CPU) into .venv and runs recipes/demo.py: a short DINO
# pretraining on the CIFAR-10 sample in recipes/data, then k-NN accuracy of
# the trained teacher next to the same network at random initialisation.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[demo]"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=3
"$venv/bin/python" recipes/demo.py --output_dir="${OUTPUT_DIR:-runs/demo}" "$@"
