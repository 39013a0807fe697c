"""keras_dino works on JAX and PyTorch where TensorFlow is not installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Makes `import tensorflow` fail as on a machine without it.
BLOCKER = """
import sys

# `import tensorflow` then raises ModuleNotFoundError and
# `importlib.util.find_spec("tensorflow")` returns None, as when it is
# not installed.
for name in ("tensorflow", "tensorboard", "tensorflow_datasets"):
    sys.modules[name] = None
"""

SCRIPT = """
import sys
import numpy as np
import keras
import keras_dino
from keras_dino.models import DINO, ViTBackbone

assert sys.modules.get("tensorflow") is None
backbone = ViTBackbone(image_size=16, patch_size=4, hidden_dim=16,
                       num_layers=1, num_heads=2)
model = DINO(backbone, out_dim=32, hidden_dim=16, bottleneck_dim=8)
model.compile(optimizer=keras_dino.optimizers.DINOAdamW(),
              schedule=keras_dino.schedules.DINOSchedule.paper(4, 1, 1))
rng = np.random.default_rng(0)
crops = tuple(rng.standard_normal((4, s, s, 3), dtype="float32")
              for s in (16, 16, 8, 8))
history = model.fit(list(crops), epochs=1, steps_per_epoch=1, verbose=0)
assert np.isfinite(history.history["loss"][0])

# The TensorFlow-free input path: PIL reader, NumPy sampler, device crops.
import tempfile
from PIL import Image
from keras_dino import numpy_data
from keras_dino.layers import DeviceMultiCropAugmentation
folder = tempfile.mkdtemp()
for i in range(2):
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype="uint8")).save(
        f"{folder}/{i}.png")
open(f"{folder}/bad.jpg", "wb").write(b"not a jpeg")
report = numpy_data.BadFileReport()
sampler = numpy_data.MultiCropSampler(16, 8, 2, seed=0)
reader = numpy_data.ImageFolderDataset(
    folder, sampler, 2, canvas_size=16, bad_file_report=report)
augment = DeviceMultiCropAugmentation.from_sampler(sampler)
if keras.backend.backend() == "jax":  # one compilation, not one per op
    import jax
    augment = jax.jit(augment)
crops = augment(reader[0])
shapes = [tuple(c.shape) for c in crops]
assert shapes == [(2, 16, 16, 3)] * 2 + [(2, 8, 8, 3)] * 2
assert report.num_bad_files == 1
try:
    import keras_dino.data  # noqa: F401
except ImportError as e:
    assert "tensorflow" in str(e)
else:
    raise AssertionError("keras_dino.data imported without TensorFlow")
assert sys.modules.get("tensorflow") is None
print("OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(name, marks=pytest.mark.backend_pass(name))
        for name in ("jax", "torch")
    ],
)
def test_import_and_train_without_tensorflow(backend, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), str(REPO), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
