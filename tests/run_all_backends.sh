#!/usr/bin/env bash
# The README's test command, and exactly what CI runs (.ci/run).
#
# Installs keras_dino with its test dependencies (the [test] extra, which
# includes ruff) into a virtual environment (.venv by default; set VENV to
# use another), checks the code with `ruff check` and `ruff format --check`,
# and runs the whole test suite once per Keras backend: TensorFlow, JAX and
# PyTorch (tests marked `backend_pass`, whose subject is one engine, run in
# that engine's pass only; see tests/conftest.py). Needs Python 3.10+ with pip; no data beside the repository and no
# network access other than pip's. Exits non-zero if the lint or any
# backend fails (all of them are run either way, so one run reports all).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA one.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
status=0
echo "=== ruff check . && ruff format --check ."
"$venv/bin/python" -m ruff check . || status=1
"$venv/bin/python" -m ruff format --check . || status=1
export TF_CPP_MIN_LOG_LEVEL=3
# One pytest-xdist worker per core (PYTEST_WORKERS overrides; 0 runs in
# this process); each worker computes on one thread (tests/conftest.py).
# --dist worksteal: an idle worker takes queued tests from the busy one,
# so the pass does not end with one worker alone (the PyTorch pass: 204 s
# against 236 s with the default --dist load; TensorFlow and JAX within
# their run-to-run spread).
workers="${PYTEST_WORKERS:-auto}"
dist=()
[ "$workers" = 0 ] || dist=(--dist worksteal)
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -n "$workers" "${dist[@]}" --durations=10 tests || status=1
done
exit "$status"
