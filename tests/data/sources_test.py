"""Tests of the source readers of `keras_dino.data` and its transforms.

The files are written by the tests (PNG, 16-bit PNG, WebP, `.npz`);
expected values come from numpy, Pillow or plain arithmetic.
"""

import os

import numpy as np
import pytest
from PIL import Image

from keras_dino.data import CenterCropTransform
from keras_dino.data import RandomResizedCropTransform
from keras_dino.data import labeled_dataset
from keras_dino.data import load_image
from keras_dino.data import load_labeled_images
from keras_dino.data import load_npz
from keras_dino.data import parse_source

# tf.data only (keras_dino.data never reads the Keras backend): these run
# in the tensorflow pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("tensorflow")

MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def _normalised(images):
    return (np.asarray(images, "float32") / 255.0 - MEAN) / STD


@pytest.fixture
def folder(tmp_path):
    """Two classes of 3 random PNGs each, of two sizes (H, W)."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name, size in (("b_class", (40, 30)), ("a_class", (20, 24))):
        os.makedirs(tmp_path / name)
        for i in range(3):
            image = rng.integers(0, 256, size + (3,)).astype("uint8")
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
            pixels[(name, i)] = image
    (tmp_path / "a_class" / "notes.txt").write_text("not an image")
    return tmp_path, pixels


def test_folder_in_memory(folder):
    root, pixels = folder
    images, labels = load_labeled_images(str(root), image_size=30)
    assert images.shape == (6, 30, 30, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # 40 x 30 images: the shorter side is already 30, so the result is
    # the centre 30 rows, unresampled (to rounding).
    expected = pixels[("b_class", 0)][5:35]
    assert np.abs(images[3].astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="differ in size"):
        load_labeled_images(str(root))
    # max_examples takes the first files of each class, evenly.
    _, labels = load_labeled_images(str(root), image_size=8, max_examples=4)
    assert labels.tolist() == [0, 0, 1, 1]
    _, labels = load_labeled_images(str(root), image_size=8, max_examples=3)
    assert sorted(labels.tolist()) == [0, 0, 1]


def test_npz_contract(tmp_path):
    np.savez(
        tmp_path / "part0.npz",
        images=np.full((3, 4, 4, 3), 7, "uint8"),
        labels=np.array([2, 0, 1]),
    )
    # Labels are optional: -1 where a file has none.
    np.savez(tmp_path / "part1.npz", images=np.full((2, 4, 4, 3), 9, "uint8"))
    source = f"{tmp_path / 'part0.npz'},{tmp_path / 'part1.npz'}"
    images, labels = load_labeled_images(source)
    assert images.shape == (5, 4, 4, 3) and labels.tolist() == [2, 0, 1, -1, -1]
    assert images[:3].max() == 7 and images[3:].min() == 9
    _, labels = load_npz(
        [tmp_path / "part0.npz", tmp_path / "part1.npz"], max_examples=4
    )
    assert labels.tolist() == [2, 0, 1, -1]
    np.savez(tmp_path / "bad.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="no `images` array"):
        load_npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "short.npz", images=np.zeros((3, 2, 2, 3)), labels=[1])
    with pytest.raises(ValueError, match="3 images but 1 labels"):
        load_npz(str(tmp_path / "short.npz"))
    with pytest.raises(ValueError, match="Unknown data source"):
        load_labeled_images(str(tmp_path / "missing.npz"))


def test_parse_source(tmp_path):
    assert parse_source("tfds:cifar10:train[:10%]") == (
        "tfds",
        ("cifar10", "train[:10%]"),
    )
    assert parse_source(str(tmp_path)) == ("folder", str(tmp_path))
    with pytest.raises(ValueError, match="tfds:<name>:<split>"):
        parse_source("tfds:cifar10")
    with pytest.raises(ValueError, match="image folder"):
        parse_source("")


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    image = load_image(str(tmp_path / "deep.png"))
    assert image.shape == (1, 4, 3) and image.dtype == np.uint8
    # value / 257, to within one level; Pillow's convert("RGB") gives
    # [0, 255, 255, 255] here.
    np.testing.assert_allclose(image[0, :, 0], values[0] / 257.0, atol=1.0)


def test_webp_and_resizing(tmp_path):
    colour = np.zeros((12, 16, 3), "uint8") + np.array([200, 30, 90], "uint8")
    Image.fromarray(colour).save(tmp_path / "a.webp", lossless=True)
    image = load_image(str(tmp_path / "a.webp"), image_size=(6, 8))
    assert image.shape == (6, 8, 3)
    np.testing.assert_array_equal(image, colour[:6, :8])


def test_labeled_dataset_of_arrays_and_files(folder, tmp_path):
    root, _ = folder
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 16, 16, 3)).astype("uint8")
    labels = np.arange(5)
    np.savez(tmp_path / "x.npz", images=images, labels=labels)
    for source in ((images, labels), str(tmp_path / "x.npz")):
        batches = list(
            labeled_dataset(
                source, 16, batch_size=2, crop_fraction=1.0
            ).as_numpy_iterator()
        )
        assert [len(b[1]) for b in batches] == [2, 2, 1]
        got = np.concatenate([b[0] for b in batches])
        np.testing.assert_allclose(got, _normalised(images), atol=2e-5)
        np.testing.assert_array_equal(
            np.concatenate([b[1] for b in batches]), labels
        )
    streamed = list(
        labeled_dataset(str(root), 8, batch_size=4, max_examples=4)
        .unbatch()
        .as_numpy_iterator()
    )
    assert [int(label) for _, label in streamed] == [0, 0, 1, 1]
    assert streamed[0][0].shape == (8, 8, 3)


def test_center_crop_on_a_batch_is_the_per_image_transform():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (3, 20, 28, 3)).astype("uint8")
    transform = CenterCropTransform(12, crop_fraction=0.75)
    assert transform.resize_size == 16
    together = np.asarray(transform(batch))
    assert together.shape == (3, 12, 12, 3)
    for image, out in zip(batch, together):
        np.testing.assert_allclose(np.asarray(transform(image)), out, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        CenterCropTransform(12, resize_size=16, crop_fraction=0.75)


def test_random_resized_crop_transform():
    # A left-to-right ramp; scale and ratio that allow only the whole
    # image, so each output is the ramp resized, flipped or not.
    ramp = np.tile(
        np.linspace(0, 255, 40).astype("uint8")[None, :, None], (20, 1, 3)
    )
    transform = RandomResizedCropTransform(
        10, scale=(1.0, 1.0), ratio=(2.0, 2.0), seed=0
    )
    directions = []
    for seed in range(40):
        out = np.asarray(transform(ramp, seed))
        assert out.shape == (10, 10, 3)
        row = out[5, :, 0]
        assert np.all(np.diff(row) > 0) or np.all(np.diff(row) < 0)
        directions.append(bool(row[0] < row[-1]))
    assert 10 <= sum(directions) <= 30  # flips with probability 0.5
    again = RandomResizedCropTransform(
        10, scale=(1.0, 1.0), ratio=(2.0, 2.0), seed=0
    )
    np.testing.assert_array_equal(
        np.asarray(again(ramp, 3)), np.asarray(transform(ramp, 3))
    )
    # A plain colour stays that colour, normalised.
    colour = np.zeros((30, 20, 3), "uint8") + np.array([10, 120, 250], "uint8")
    out = np.asarray(RandomResizedCropTransform(8, seed=1)(colour, 5))
    np.testing.assert_allclose(
        out, np.broadcast_to(_normalised(colour[0, 0]), (8, 8, 3)), atol=1e-4
    )
