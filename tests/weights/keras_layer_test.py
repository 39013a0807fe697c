"""Imported backbones as ordinary Keras layers: fit, freeze, save, load."""

import keras
import numpy as np
import pytest
from checkpoint_factory import write_checkpoint

from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD
from keras_dino.layers.preprocessing import ImagePreprocessing
from keras_dino.models.vit_backbone import ViTBackbone


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_preprocessing_normalises_uint8():
    images = np.random.RandomState(0).randint(0, 256, (2, 8, 6, 3), "uint8")
    layer = ImagePreprocessing()
    expected = (images / 255.0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    np.testing.assert_allclose(_np(layer(images)), expected, atol=1e-5)


def test_preprocessing_resizes_and_round_trips():
    layer = ImagePreprocessing(image_size=(16, 24), interpolation="bilinear")
    images = np.full((2, 30, 40, 3), 128, "uint8")
    out = _np(layer(images))
    assert out.shape == (2, 16, 24, 3)
    expected = (128 / 255.0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    np.testing.assert_allclose(out[0, 3, 5], expected, atol=1e-5)
    assert layer.compute_output_shape((None, 30, 40, 3)) == (None, 16, 24, 3)
    clone = ImagePreprocessing.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="image_size"):
        ImagePreprocessing(image_size=(1, 2, 3))


def test_imported_backbone_in_a_classifier(tmp_path):
    path = tmp_path / "tiny.pth"
    write_checkpoint(path, depth=1, scale=0.2)
    backbone = ViTBackbone.from_preset(str(path), num_heads=2)

    inputs = keras.Input((20, 28, 3), dtype="uint8")
    x = ImagePreprocessing(image_size=16, name="preprocessing")(inputs)
    x = backbone(x)
    outputs = keras.layers.Dense(3, name="classifier")(x)
    model = keras.Model(inputs, outputs)

    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (8, 20, 28, 3)).astype("uint8")
    labels = rng.randint(0, 3, (8,))
    imported = [_np(w) for w in backbone.weights]

    # Linear probe: the imported backbone is frozen.
    backbone.trainable = False
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    head_before = _np(model.get_layer("classifier").kernel)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    for w, before in zip(backbone.weights, imported):
        np.testing.assert_array_equal(_np(w), before)
    assert not np.allclose(
        _np(model.get_layer("classifier").kernel), head_before
    )

    # Fine-tuning: everything trains.
    backbone.trainable = True
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    qkv = backbone.blocks[0].attention.qkv.kernel
    assert not np.allclose(
        _np(qkv), imported[[w.path for w in backbone.weights].index(qkv.path)]
    )

    expected = _np(model.predict(images, verbose=0))
    model.save(tmp_path / "classifier.keras")
    restored = keras.saving.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(
        _np(restored.predict(images, verbose=0)), expected, atol=1e-6
    )
    assert isinstance(restored.layers[2], ViTBackbone)


def test_sequential_with_imported_backbone(tmp_path):
    path = tmp_path / "tiny.pth"
    write_checkpoint(path, depth=1, scale=0.2)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            ImagePreprocessing(),
            ViTBackbone.from_preset(str(path), num_heads=2),
            keras.layers.Dense(2),
        ]
    )
    images = np.random.RandomState(1).rand(2, 16, 16, 3).astype("float32")
    expected = _np(model(images))
    model.save_weights(tmp_path / "model.weights.h5")
    clone = keras.models.clone_model(model)
    clone.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_allclose(_np(clone(images)), expected, atol=1e-6)
