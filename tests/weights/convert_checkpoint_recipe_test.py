"""Runs `recipes/convert_checkpoint.py` on small checkpoints."""

import argparse
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch
from checkpoint_factory import tiny_state_dict

from keras_dino.models.vit_backbone import ViTBackbone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "convert_checkpoint.py")


def _backbone_tensors(seed=0):
    return tiny_state_dict(depth=1, seed=seed, scale=0.2, prefix="backbone.")


def _run(*flags):
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, RECIPE, *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_full_checkpoint_to_keras_backbone(tmp_path):
    g = torch.Generator().manual_seed(1)
    head = {
        "head.mlp.0.weight": torch.randn(8, 16, generator=g),
        "head.mlp.0.bias": torch.randn(8, generator=g),
        "head.mlp.2.weight": torch.randn(4, 8, generator=g),
        "head.mlp.2.bias": torch.randn(4, generator=g),
        "head.last_layer.weight_g": torch.ones(32, 1),
        "head.last_layer.weight_v": torch.randn(32, 4, generator=g),
    }
    teacher = {**_backbone_tensors(), **head}
    student = {**_backbone_tensors(seed=5), **head}
    checkpoint = {
        "student": {f"module.{k}": v for k, v in student.items()},
        "teacher": teacher,
        "epoch": 12,
        "args": argparse.Namespace(norm_last_layer=True, drop_path_rate=0.1),
        "dino_loss": {"center": torch.randn(1, 32, generator=g)},
        "optimizer": {"state": {}, "param_groups": []},
    }
    source = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, source)
    output = tmp_path / "teacher_backbone.keras"
    stdout = _run(
        f"--checkpoint={source}",
        f"--output={output}",
        "--model=backbone",
        "--num_heads=2",
    )
    assert "full DINO training checkpoint" in stdout
    assert '"hidden_dim": 16' in stdout and '"patch_size": 8' in stdout
    assert '"num_layers": 2' in stdout and '"out_dim": 32' in stdout
    assert "Tensors: 18 backbone, 6 head" in stdout
    assert "not used: ['epoch', 'optimizer', 'student']" in stdout
    assert "Center size: 32" in stdout and "Epoch: 12" in stdout
    assert "Built ViTBackbone" in stdout

    restored = keras.saving.load_model(output)
    expected = ViTBackbone.from_preset(str(source), num_heads=2)
    images = np.random.RandomState(0).rand(2, 16, 24, 3).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images)),
        keras.ops.convert_to_numpy(expected(images)),
        atol=1e-6,
    )
