"""Pretraining with `augment_on="device"`: crops made in the training step.

The run reads an image folder with `keras_dino.numpy_data` and its DINO
makes the crops with `DeviceMultiCropAugmentation`. A run stopped after
one epoch and resumed must end where the uninterrupted run ends (same
losses, same teacher): the reader resumes at the right epoch.
"""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dino import configs
from keras_dino import pretraining
from keras_dino.layers import DeviceMultiCropAugmentation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

TINY = {
    "arch": "vit_tiny",
    "depth": 1,
    "patch_size": 8,
    "out_dim": 32,
    "head_hidden_dim": 16,
    "head_bottleneck_dim": 8,
    "batch_size": 8,
    "epochs": 2,
    "warmup_epochs": 1,
    "local_crops_number": 2,
    "augment_on": "device",
    "canvas_size": 96,
}


def _history(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _run(config, folder, output_dir, stop_after=None):
    stream, num_images = pretraining.device_input(
        config, str(folder), workers=1
    )
    assert num_images == 42
    return pretraining.pretrain(
        config,
        stream,
        len(stream.reader),
        str(output_dir),
        verbose=0,
        stop_after_epochs=stop_after,
    )


@pytest.mark.slow
def test_device_input_run_resumes_exactly(image_folders, tmp_path):
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    folder = image_folders / "train"
    model, _ = _run(config, folder, tmp_path / "straight")
    assert isinstance(model.augmentation, DeviceMultiCropAugmentation)
    assert model.augmentation.global_crop_size == config["image_size"]
    straight = _history(tmp_path / "straight")
    assert len(straight) == 2

    _run(config, folder, tmp_path / "resumed", stop_after=1)
    resumed_model, second = _run(config, folder, tmp_path / "resumed")
    assert len(second.history["loss"]) == 1
    assert isinstance(resumed_model.augmentation, DeviceMultiCropAugmentation)
    resumed = _history(tmp_path / "resumed")
    # The second epoch read the second epoch's batches, not the first's.
    assert straight[0]["loss"] != straight[1]["loss"]
    np.testing.assert_allclose(
        [float(row["loss"]) for row in resumed],
        [float(row["loss"]) for row in straight],
        rtol=1e-5,
    )
    teachers = [
        keras.saving.load_model(
            tmp_path / name / "teacher_backbone.keras"
        ).get_weights()
        for name in ("straight", "resumed")
    ]
    for a, b in zip(*teachers):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_steps_must_match_the_reader(image_folders):
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    stream, _ = pretraining.device_input(config, str(image_folders / "train"))
    with pytest.raises(ValueError, match="5 batches per epoch"):
        stream.dataset(steps_per_epoch=3)


def test_a_stored_run_without_the_new_keys_still_resumes(tmp_path):
    """Runs stored before `augment_on` existed ran on the host."""
    config = configs.get_config("cifar10_vit_tiny")
    pretraining.check_run_config(tmp_path, config, 10)
    path = tmp_path / pretraining.RUN_CONFIG
    stored = path.read_text()
    for key in configs.ADDED_KEYS:
        assert f'"{key}"' in stored
    trimmed = {
        k: v
        for k, v in json.loads(stored).items()
        if k not in configs.ADDED_KEYS
    }
    path.write_text(json.dumps(trimmed))
    pretraining.check_run_config(tmp_path, config, 10)
    with pytest.raises(ValueError, match="augment_on: 'host' -> 'device'"):
        pretraining.check_run_config(
            tmp_path, dict(config, augment_on="device"), 10
        )


def test_recipe_refuses_device_input_without_an_image_folder(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((8, 32, 32, 3), np.uint8))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "pretrain.py"),
            "--config=cifar10_vit_tiny",
            f"--npz={tmp_path / 'x.npz'}",
            f"--output_dir={tmp_path / 'run'}",
            "--augment_on=device",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert proc.returncode != 0
    assert "--augment_on=device reads an image folder" in proc.stderr
    assert not (tmp_path / "run").exists()
