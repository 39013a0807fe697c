"""Tests of evaluation preprocessing and frozen feature extraction."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.data import CenterCropTransform
from keras_dino.evaluation import extract_features
from keras_dino.evaluation import l2_normalize
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


def _normalised(images):
    """The ImageNet normalisation in numpy, independent of keras_dino."""
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array([0.229, 0.224, 0.225], "float32")
    return ((images / 255.0 - mean) / std).astype("float32")


def test_evaluation_transform_at_the_image_size_only_normalises(images):
    # The one evaluation transform, used as `preprocessing`: at the
    # images' own size (crop_fraction 1) it is the plain normalisation.
    prep = CenterCropTransform(32, crop_fraction=1.0)
    np.testing.assert_allclose(
        np.asarray(prep(images)), _normalised(images), atol=2e-5
    )


def test_extract_features_matches_backbone(backbone, images):
    prep = CenterCropTransform(32, crop_fraction=1.0)
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
    prep = CenterCropTransform(32, crop_fraction=1.0)
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
