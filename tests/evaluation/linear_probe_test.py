"""Tests of the linear probe: features, classifier, schedule, training."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.data import CenterCropTransform
from keras_dino.evaluation import LinearProbe
from keras_dino.evaluation import ProbeFeatureExtractor
from keras_dino.evaluation import build_linear_classifier
from keras_dino.evaluation import build_linear_probe
from keras_dino.evaluation import extract_features
from keras_dino.evaluation import fit_linear_classifier
from keras_dino.evaluation import fit_linear_probe
from keras_dino.evaluation import load_reference_linear_weights
from keras_dino.evaluation.linear_probe_schedule import EpochCosineDecay
from keras_dino.evaluation.linear_probe_schedule import (
    linear_probe_learning_rate,
)
from keras_dino.models import ViTBackbone


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return ViTBackbone(
        image_size=32, patch_size=8, hidden_dim=16, num_layers=3, num_heads=2
    )


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 32, 32, 3)).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def test_features_concat_last_cls_tokens(backbone, inputs):
    extractor = ProbeFeatureExtractor(backbone, n_last_blocks=2)
    features = _np(extractor(inputs))
    layers = backbone.get_intermediate_layers(inputs, 2)
    expected = np.concatenate([_np(t)[:, 0] for t in layers], axis=-1)
    assert features.shape == (3, 32) and extractor.output_dim == 32
    np.testing.assert_allclose(features, expected, atol=1e-5)
    # The last block's CLS token is the backbone output.
    np.testing.assert_allclose(
        features[:, 16:], _np(backbone(inputs)), atol=1e-5
    )


def test_features_avgpool_interleaved_as_reference(backbone, inputs):
    extractor = ProbeFeatureExtractor(
        backbone, n_last_blocks=1, avgpool_patchtokens=True
    )
    features = _np(extractor(inputs))
    (last,) = backbone.get_intermediate_layers(inputs, 1)
    last = _np(last)
    cls, avg = last[:, 0], last[:, 1:].mean(axis=1)
    # torch: cat((cls[..., None], avg[..., None]), -1).reshape(B, -1)
    expected = np.stack([cls, avg], axis=-1).reshape(3, -1)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    with pytest.raises(ValueError, match="n_last_blocks=1"):
        ProbeFeatureExtractor(backbone, 2, avgpool_patchtokens=True)
    with pytest.raises(ValueError, match="between 1"):
        ProbeFeatureExtractor(backbone, n_last_blocks=4)
    with pytest.raises(TypeError, match="get_intermediate_layers"):
        ProbeFeatureExtractor(keras.layers.Dense(2))


def test_classifier_initialisation():
    layer = build_linear_classifier(10)
    layer.build((None, 2000))
    kernel = _np(layer.kernel)
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001
    np.testing.assert_array_equal(_np(layer.bias), 0)


def test_epoch_cosine_decay():
    assert linear_probe_learning_rate(512) == pytest.approx(0.002)
    schedule = EpochCosineDecay(0.1, steps_per_epoch=4, epochs=5)
    values = [float(_np(schedule(step))) for step in range(20)]
    for epoch in range(5):
        expected = 0.05 * (1 + math.cos(math.pi * epoch / 5))
        # Constant within an epoch; epoch 0 uses the base rate.
        np.testing.assert_allclose(
            values[4 * epoch : 4 * epoch + 4], expected, rtol=1e-6
        )
    config = schedule.get_config()
    assert EpochCosineDecay.from_config(config).get_config() == config


def test_probe_trains_only_the_classifier(backbone, inputs):
    probe = build_linear_probe(backbone, num_classes=5, n_last_blocks=2)
    assert isinstance(probe, LinearProbe)
    assert [v.path for v in probe.trainable_variables] == [
        "linear/kernel",
        "linear/bias",
    ]
    logits = _np(probe(inputs))
    features = _np(probe.feature_extractor(inputs))
    expected = features @ _np(probe.classifier.kernel)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_probe_trains_on_separable_images(backbone, tmp_path):
    # Red vs blue images: trivially separable, chance is 50%. The features
    # of a random tiny ViT share a large common component, so a moderate
    # learning rate and a few epochs are needed.
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    images = rng.integers(0, 60, (80, 32, 32, 3)).astype("uint8")
    images[labels == 0, ..., 0] += 190
    images[labels == 1, ..., 2] += 190
    probe = build_linear_probe(backbone, num_classes=2, n_last_blocks=2)
    before = [_np(w) for w in backbone.weights]
    result = fit_linear_probe(
        probe,
        images[:64],
        labels[:64],
        images[64:],
        labels[64:],
        epochs=5,
        batch_size=8,
        base_learning_rate=0.25,
        verbose=0,
    )
    assert result["best_top1"] > 75.0 and result["final_top1"] > 75.0
    assert 1 <= result["best_epoch"] <= 5
    losses = result["history"]["loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    for old, new in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, _np(new))
    # .keras round trip of the trained probe.
    path = os.path.join(tmp_path, "probe.keras")
    probe.save(path)
    restored = keras.saving.load_model(path, compile=False)
    x = CenterCropTransform(32, crop_fraction=1.0)(images[:4])
    np.testing.assert_allclose(_np(restored(x)), _np(probe(x)), atol=1e-5)
    assert restored.n_last_blocks == 2 and restored.num_classes == 2


def test_fast_mode_on_cached_features(backbone):
    # Features computed with extract_features on the probe's extractor are
    # the probe's features.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3)).astype("uint8")
    probe = build_linear_probe(backbone, num_classes=3, n_last_blocks=2)
    prep = CenterCropTransform(32, crop_fraction=1.0)
    cached = extract_features(
        probe.feature_extractor,
        images,
        batch_size=6,
        preprocessing=prep,
        normalize=False,
        verbose=0,
    )
    np.testing.assert_allclose(
        cached, _np(probe.feature_extractor(prep(images))), atol=1e-5
    )
    # Trivially separable features: class = sign of the first coordinate.
    labels = np.arange(64) % 2
    features = rng.normal(size=(64, 8)).astype("float32")
    features[:, 0] = np.where(labels == 1, 5.0, -5.0)
    classifier, result = fit_linear_classifier(
        features[:48],
        labels[:48],
        features[48:],
        labels[48:],
        epochs=3,
        batch_size=16,
        base_learning_rate=1.0,
        verbose=0,
    )
    assert result["best_top1"] > 90.0
    assert classifier.kernel.shape == (8, 2)
    with pytest.raises(ValueError, match="differ in length"):
        fit_linear_classifier(features, labels[:3], features, labels)


def test_load_reference_linear_weights(backbone, tmp_path):
    torch = pytest.importorskip("torch")
    probe = build_linear_probe(backbone, num_classes=5, n_last_blocks=2)
    weight, bias = torch.randn(5, 32), torch.randn(5)
    path = tmp_path / "linearweights.pth"
    torch.save(
        {
            "epoch": 100,
            "state_dict": {
                "module.linear.weight": weight,
                "module.linear.bias": bias,
            },
            "best_acc": 77.0,
        },
        path,
    )
    load_reference_linear_weights(probe, str(path))
    np.testing.assert_array_equal(
        _np(probe.classifier.kernel), weight.numpy().T
    )
    np.testing.assert_array_equal(_np(probe.classifier.bias), bias.numpy())
    with pytest.raises(ValueError, match="do not fit"):
        load_reference_linear_weights(
            build_linear_probe(backbone, num_classes=5, n_last_blocks=1),
            str(path),
        )
