"""Hostile and odd inputs to the readers: FIFOs, devices, link loops,
undecodable names, folders where nothing decodes, float arrays in [0, 255].
"""

import os

import numpy as np
import pytest
from PIL import Image

from keras_dino import configs
from keras_dino import pretraining
from keras_dino.data import BadFileReport
from keras_dino.data import MultiCropAugmentation
from keras_dino.data import from_arrays
from keras_dino.data import from_image_folder
from keras_dino.data import list_image_files
from keras_dino.data.arrays import _check_arrays


def _write_jpegs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for n, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"{n:03d}.jpg"))


@pytest.fixture
def flat(tmp_path, cifar_sample):
    """A flat folder of 4 real JPEGs."""
    _write_jpegs(tmp_path / "flat", cifar_sample[0][:4])
    return tmp_path / "flat"


def _count(dataset):
    return sum(int(c[0].shape[0]) for c in dataset)


def _augmentation():
    return MultiCropAugmentation(16, 8, 2, seed=0)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_float_arrays_in_0_255_are_refused():
    images = np.full((4, 8, 8, 3), 200.0, "float32")
    with pytest.raises(ValueError, match="divide them by 255") as error:
        from_arrays(images, batch_size=2)
    assert "uint8" in str(error.value) and "200" in str(error.value)
    # Floats in [0, 1] (and uint8 in [0, 255]) are still accepted.
    for accepted in (images / 255.0, images.astype("uint8")):
        checked, _ = _check_arrays(accepted, None)
        np.testing.assert_array_equal(checked, accepted)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_fifo_and_device_links_are_skipped_and_reported(flat):
    os.mkfifo(flat / "x.jpg")
    os.symlink("/dev/zero", flat / "zero.jpg")
    os.symlink(flat / "missing.png", flat / "broken.png")
    report = BadFileReport()
    paths, _, _ = list_image_files(flat, report)
    # Listed: the 4 regular files only (a FIFO would block the reader).
    assert sorted(os.path.basename(p) for p in paths) == [
        f"{n:03d}.jpg" for n in range(4)
    ]
    assert report.bad_files == sorted(
        str(flat / name) for name in ("x.jpg", "zero.jpg", "broken.png")
    )
    assert "FIFO" in report.reason(str(flat / "x.jpg"))
    assert "device" in report.reason(str(flat / "zero.jpg"))
    assert "x.jpg (a FIFO" in report.summary()
    # The whole pipeline finishes (no hang, no memory blow-up).
    ds = from_image_folder(
        flat, _augmentation(), batch_size=2, seed=0, bad_file_report=report
    )
    assert _count(ds) == 4


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_a_name_that_is_not_utf8_is_skipped_and_named(flat):
    bad = os.path.join(os.fsencode(flat), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write((flat / "000.jpg").read_bytes())
    report = BadFileReport()
    ds = from_image_folder(
        flat, _augmentation(), batch_size=2, seed=0, bad_file_report=report
    )
    assert _count(ds) == 4
    assert report.bad_files == [str(flat / "caf\ufffd.jpg")]
    assert "UTF-8" in report.reason(str(flat / "caf\ufffd.jpg"))


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_a_symlink_loop_lists_each_file_once(tmp_path, cifar_sample):
    root = tmp_path / "root"
    _write_jpegs(root / "a" / "sub", cifar_sample[0][:2])
    _write_jpegs(root / "b", cifar_sample[0][2:5])
    os.symlink(root / "a", root / "a" / "sub" / "loop")  # a/sub/loop -> a
    os.symlink(root / "b", root / "a" / "b_again")
    os.symlink(root / "b" / "000.jpg", root / "a" / "same.jpg")
    paths, labels, classes = list_image_files(root)
    assert classes == ["a", "b"]
    assert len(paths) == len({os.path.realpath(p) for p in paths}) == 5
    # b/000.jpg is listed once, first reached as a/same.jpg.
    assert labels == [0, 0, 0, 1, 1]
    assert str(root / "b" / "000.jpg") not in paths


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_a_folder_where_nothing_decodes_is_refused(tmp_path):
    root = tmp_path / "garbage"
    os.makedirs(root)
    for n in range(3):
        (root / f"{n}.jpg").write_bytes(b"not an image " * n)
    with pytest.raises(ValueError, match="None of the 3 image files") as e:
        from_image_folder(root, _augmentation(), batch_size=1)
    assert str(root) in str(e.value)
    config = configs.get_config("cifar10_vit_tiny")
    with pytest.raises(ValueError, match="None of the 3 image files"):
        pretraining.pretraining_dataset(
            pretraining.multi_crop_augmentation(config), 1, image_folder=root
        )


TINY = {
    "arch": "vit_tiny",
    "depth": 1,
    "patch_size": 8,
    "out_dim": 32,
    "head_hidden_dim": 16,
    "head_bottleneck_dim": 8,
    "batch_size": 4,
    "epochs": 1,
    "warmup_epochs": 0,
    "warmup_teacher_temp_epochs": 0,
    "teacher_temp": 0.06,
    "local_crops_number": 2,
}


# The report is `pretrain`'s Python callback, the same on every backend;
# `readers_test.py::test_dino_fit_on_a_folder_with_bad_files` fits a
# folder with bad files and reports them on every backend.
@pytest.mark.backend_pass("tensorflow")
def test_pretrain_lists_skipped_files_at_epoch_end(
    tmp_path, cifar_sample, capsys
):
    folder = tmp_path / "photos"
    _write_jpegs(folder, cifar_sample[0][:8])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    config = configs.get_config("cifar10_vit_tiny", **TINY)
    stream, num_images = pretraining.pretraining_dataset(
        pretraining.multi_crop_augmentation(config),
        config["batch_size"],
        image_folder=str(folder),
        seed=0,
    )
    assert isinstance(stream.bad_file_report, BadFileReport)
    capsys.readouterr()
    pretraining.pretrain(config, stream, 2, str(tmp_path / "run"), verbose=0)
    out = capsys.readouterr().out
    assert "Epoch 1: skipped 1 new" in out
    assert str(folder / "broken.jpg") in out
