"""benchmarks/gpu_bench.py --smoke: the prepared GPU benchmark runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_bench.py"


@pytest.mark.backend_pass("torch")
def test_smoke_writes_json_and_table(tmp_path):
    # A PyTorch subprocess whatever the pass, so it runs in the torch pass
    # only: the smoke run's cost on JAX would be its compilation (~40 s
    # on 2 cores); the JAX parts of the script are checked in-process
    # below, on every backend.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--backends=torch",
            "--dtypes=mixed_float16",
            f"--output_dir={tmp_path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["config"]["crops"] == "2 x 32 + 2 x 16"
    kinds = [(r["backend"], r["kind"]) for r in report["results"]]
    assert kinds == [("torch", "augmentation"), ("torch", "step")]
    for result in report["results"]:
        assert "error" not in result, result
        assert result["images_per_s"] > 0
    assert report["results"][1]["ms_per_step"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert "| torch | DINO step | mixed_float16 |" in table
    assert "device augmentation" in table


def test_device_queries_on_this_backend():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_bench

    backend = keras.backend.backend()
    name = gpu_bench._device_name(backend)
    assert isinstance(name, str) and name
    peak = gpu_bench._peak_memory_gib(backend)
    assert peak is None or peak > 0
    failed = {"backend": "jax", "kind": "step", "dtype": "x", "error": "E"}
    report = {
        "config": {"crops": "c", "out_dim": 1},
        "config_name": "n",
        "batch_size": 1,
        "date": "d",
        "gpu": None,
        "versions": {"keras": "3"},
        "results": [failed],
    }
    assert "| jax | DINO step | x |  |  |  |  | E |" in gpu_bench.markdown(
        report
    )
