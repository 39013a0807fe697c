"""Tests of `load_backbone` and of what `keras_dino.evaluation` imports."""

import os
import subprocess
import sys

import keras
import pytest

from keras_dino.evaluation import load_backbone
from keras_dino.models import ViTBackbone


def test_load_backbone(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(
        image_size=16, patch_size=8, hidden_dim=8, num_layers=1, num_heads=2
    )
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    restored = load_backbone(path)
    assert isinstance(restored, ViTBackbone) and restored.hidden_dim == 8
    # random_init is exercised end to end by the eval_knn recipe test.
    # A saved DINO model gives its teacher backbone.
    from keras_dino.models.dino import DINO

    dino = DINO(backbone, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    dino.save(str(tmp_path / "dino.keras"))
    teacher = load_backbone(str(tmp_path / "dino.keras"))
    assert teacher.name == dino.teacher_backbone.name
    with pytest.raises(ValueError, match="exactly one"):
        load_backbone(path, random_init=True, arch="ViT-T/16")
    with pytest.raises(FileNotFoundError):
        load_backbone(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="needs arch"):
        load_backbone(random_init=True)


@pytest.mark.backend_pass("jax")
def test_import_does_not_load_tensorflow():
    code = (
        "import sys, keras_dino.evaluation; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, env=env
    )
