#!/usr/bin/env bash
# Installs keras_dino with its test dependencies into a virtual environment
# (.venv by default) and runs the whole test suite once per Keras backend:
# TensorFlow, JAX and PyTorch. Exits non-zero if any backend fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA one.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
export TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests || status=1
done
exit "$status"
