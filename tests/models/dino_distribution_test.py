"""Data parallelism: 2 replicas give the same step as 1 replica.

The MirroredStrategy test only means something on the TensorFlow backend
(it is TensorFlow's data-parallel API); it runs a TensorFlow subprocess in
the tensorflow pass of the test command only (`backend_pass`). On JAX
and PyTorch the equivalent property is checked: with no strategy the loss
is not rescaled (`num_replicas_in_sync() == 1`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_dino.utils.distribution import num_replicas_in_sync
from keras_dino.utils.distribution import scale_loss_for_replicas

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import sys

import pytest

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras
import numpy as np

from keras_dino.models import DINO, ViTBackbone
from keras_dino.optimizers import DINOAdamW
from keras_dino.schedules import DINOSchedule
from keras_dino.utils.distribution import num_replicas_in_sync

GLOBAL_BATCH, STEPS = 8, 2
rng = np.random.default_rng(0)
crops = tuple(
    rng.normal(size=(GLOBAL_BATCH * STEPS, s, s, 3)).astype("float32")
    for s in (32, 32, 16, 16)
)


def run(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        backbone = ViTBackbone(
            image_size=32, patch_size=8, hidden_dim=16, num_layers=1,
            num_heads=2, mlp_ratio=2.0,
        )
        model = DINO(backbone, out_dim=64, hidden_dim=32, bottleneck_dim=16)
        model.compile(
            optimizer=DINOAdamW(clip_norm=0.5),
            schedule=DINOSchedule.paper(
                batch_size=GLOBAL_BATCH, steps_per_epoch=STEPS, epochs=1,
                learning_rate=0.5, warmup_epochs=0, teacher_momentum=0.9,
                freeze_last_layer_epochs=0,
            ),
        )
        replicas = num_replicas_in_sync()
        initial = _values(model)
    history = model.fit(
        x=crops, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
        verbose=0,
    )
    return replicas, initial, _values(model), history.history["loss"][0]


def _values(model):
    # Keys without the model's own name (dino, dino_1, ...) in front.
    return {
        w.path.split("/", 1)[-1] if w.path.startswith("dino") else w.path:
        keras.ops.convert_to_numpy(w)
        for w in model.weights
    }


r1, i1, w1, l1 = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
r2, i2, w2, l2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
json.dump({
    "replicas": [r1, r2],
    "loss": [l1, l2],
    "initial": max(float(np.abs(i1[k] - i2[k]).max()) for k in i1),
    "moved": int(sum(not np.allclose(w1[k], i1[k]) for k in w1)),
    "diffs": {k: float(np.abs(w1[k] - w2[k]).max()) for k in w1},
}, sys.stdout)
"""


@pytest.mark.slow
@pytest.mark.backend_pass("tensorflow")
def test_tensorflow_mirrored_two_replicas_equal_one(tmp_path):
    """MirroredStrategy is TensorFlow-only: the check runs in a TensorFlow
    subprocess, whatever the backend of this test run."""
    script = tmp_path / "mirrored.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert abs(result["loss"][0] - result["loss"][1]) < 1e-5
    bad = {k: v for k, v in result["diffs"].items() if v > 1e-5}
    assert not bad, bad  # weights, teacher and center (dino/center)
    assert "center" in result["diffs"]
    assert result["initial"] == 0.0  # same initial weights
    assert result["moved"] >= 20  # the steps did move the weights


def test_loss_not_rescaled_without_strategy():
    assert num_replicas_in_sync() == 1
    assert scale_loss_for_replicas(3.0) == 3.0
