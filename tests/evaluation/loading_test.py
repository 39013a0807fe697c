"""Tests of the evaluation loaders (arrays, image folders, backbones)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_dino.evaluation import load_backbone
from keras_dino.evaluation import load_image
from keras_dino.evaluation import load_image_folder
from keras_dino.evaluation import load_labeled_images
from keras_dino.evaluation import load_npz
from keras_dino.models import ViTBackbone


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, size in (("b_class", (40, 30)), ("a_class", (20, 24))):
        os.makedirs(tmp_path / name)
        for i in range(3):
            pixels = rng.integers(0, 256, size + (3,)).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a_class" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder(folder):
    images, labels, names = load_image_folder(str(folder), image_size=16)
    assert names == ["a_class", "b_class"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="differ in size"):
        load_image_folder(str(folder))
    images, labels = load_labeled_images(
        str(folder), image_size=8, max_examples=2
    )
    assert images.shape == (2, 8, 8, 3) and labels.tolist() == [0, 1]
    one = load_image(str(folder / "b_class" / "0.png"), image_size=(10, 12))
    assert one.shape == (10, 12, 3)


def test_npz(tmp_path):
    for i in range(2):
        np.savez(
            tmp_path / f"part{i}.npz",
            images=np.full((3, 4, 4, 3), i, "uint8"),
            labels=np.arange(3) + i,
        )
    paths = f"{tmp_path / 'part0.npz'},{tmp_path / 'part1.npz'}"
    images, labels = load_labeled_images(paths, max_examples=5)
    assert images.shape == (5, 4, 4, 3) and labels.tolist() == [0, 1, 2, 1, 2]
    np.savez(tmp_path / "bad.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="lacks the keys"):
        load_npz(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="Unknown data source"):
        load_labeled_images(str(tmp_path / "missing.npz"))


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


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, keras_dino.evaluation; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, env=env
    )
