"""Tests of evaluation preprocessing and frozen feature extraction."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.evaluation import IMAGENET_MEAN
from keras_dino.evaluation import IMAGENET_STD
from keras_dino.evaluation import extract_features
from keras_dino.evaluation import imagenet_preprocessing
from keras_dino.evaluation import l2_normalize
from keras_dino.evaluation import preprocess_images
from keras_dino.models import ViTBackbone


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return ViTBackbone(
        image_size=32, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2
    )


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10, 32, 32, 3)).astype("uint8")


def test_preprocess_normalises_and_resizes():
    white = np.full((2, 20, 20, 3), 255, "uint8")
    out = preprocess_images(white, image_size=32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[0, 5, 7], expected, rtol=1e-5)
    # uint8 and [0, 1] floats give the same result.
    x = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), "uint8")
    np.testing.assert_allclose(
        preprocess_images(x), preprocess_images(x / 255.0), atol=1e-6
    )


def test_preprocess_centre_crop():
    x = np.zeros((1, 8, 8, 3), "uint8")
    x[:, 2:6, 2:6] = 255
    out = preprocess_images(x, crop_fraction=0.5)
    assert out.shape == (1, 4, 4, 3)
    white = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(out[..., 0], white, rtol=1e-5)
    with pytest.raises(ValueError, match="crop_fraction"):
        preprocess_images(x, crop_fraction=0.0)
    with pytest.raises(ValueError, match="batch, height, width, 3"):
        preprocess_images(np.zeros((8, 8, 3)))


def test_extract_features_matches_backbone(backbone, images):
    prep = imagenet_preprocessing(32)
    # 10 images in batches of 4: the last batch is padded and trimmed.
    features = extract_features(
        backbone, images, batch_size=4, preprocessing=prep, verbose=0
    )
    expected = ops.convert_to_numpy(backbone(prep(images), training=False))
    assert features.shape == (10, 16) and features.dtype == np.float32
    np.testing.assert_allclose(features, l2_normalize(expected), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    raw = extract_features(
        backbone,
        images,
        batch_size=4,
        preprocessing=prep,
        normalize=False,
        verbose=0,
    )
    np.testing.assert_allclose(raw, expected, atol=1e-5)


def test_extract_features_from_batched_dataset(images):
    labels = np.arange(10) % 3
    batches = [(images[i : i + 4], labels[i : i + 4]) for i in (0, 4, 8)]

    def model(x):  # a plain callable
        return np.asarray(x, "float32").mean(axis=(1, 2))

    features, got_labels = extract_features(model, batches, verbose=0)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(
        features, l2_normalize(images.astype("float32").mean(axis=(1, 2)))
    )
    # Bare image batches: labels are None.
    _, no_labels = extract_features(model, [images[:4]], verbose=0)
    assert no_labels is None


def test_extract_features_from_tf_data(backbone, images):
    tf = pytest.importorskip("tensorflow")
    labels = np.arange(10)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(5)
    prep = imagenet_preprocessing(32)
    features, got = extract_features(
        backbone, ds, preprocessing=prep, verbose=0
    )
    np.testing.assert_array_equal(got, labels)
    direct = extract_features(
        backbone, images, batch_size=5, preprocessing=prep, verbose=0
    )
    np.testing.assert_allclose(features, direct, atol=1e-5)


def test_cache(tmp_path, images):
    calls = []

    def model(x):
        calls.append(len(x))
        return np.asarray(x, "float32").reshape(len(x), -1)[:, :5]

    path = tmp_path / "sub" / "feats"
    first = extract_features(model, images, cache_path=path, verbose=0)
    assert (tmp_path / "sub" / "feats.npz").exists() and calls == [10]
    second = extract_features(model, images, cache_path=path, verbose=0)
    assert calls == [10]
    np.testing.assert_array_equal(first, second)
    # A cache of another size is recomputed, with a warning.
    with pytest.warns(UserWarning, match="recomputing"):
        extract_features(model, images[:3], cache_path=path, verbose=0)
    assert calls == [10, 3]


def test_errors(images):
    with pytest.raises(ValueError, match="image array"):
        extract_features(lambda x: x, images[0], verbose=0)
    with pytest.raises(TypeError, match="callable"):
        extract_features(object(), images, verbose=0)
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        extract_features(lambda x: x, images, verbose=0)
