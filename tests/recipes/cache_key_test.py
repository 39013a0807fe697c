"""--cache_dir of the evaluation recipes: keyed on content, not on paths."""

import importlib.util
import os
import types

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _recipe_flags():
    spec = importlib.util.spec_from_file_location(
        "recipe_flags_cache_key_test",
        os.path.join(ROOT, "recipes", "recipe_flags.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flags(tmp_path, backbone, train, val):
    return types.SimpleNamespace(
        cache_dir=str(tmp_path / "cache"),
        backbone=backbone,
        preset=None,
        arch=None,
        random_init=False,
        seed=0,
        train_data=train,
        val_data=val,
        max_train=0,
        max_val=0,
        crop_fraction=1.0,
        stream=False,
        batch_size=4,
    )


def _backbone():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(inputs)
    )
    return keras.Model(inputs, outputs)


def test_retrained_backbone_at_the_same_path_misses_the_cache(
    tmp_path, cifar_sample
):
    recipe_flags = _recipe_flags()
    images, labels = cifar_sample[0][:12], cifar_sample[1][:12]
    train, val = str(tmp_path / "train.npz"), str(tmp_path / "val.npz")
    np.savez(train, images=images[:8], labels=labels[:8])
    np.savez(val, images=images[8:], labels=labels[8:])
    path = str(tmp_path / "backbone.keras")
    keras.utils.set_random_seed(0)
    _backbone().save(path)
    flags = _flags(tmp_path, path, train, val)

    def features():
        model = keras.saving.load_model(path)
        return recipe_flags.split_features(flags, model, 8, False, "knn")

    first = features()
    cache = tmp_path / "cache"
    assert len(os.listdir(cache)) == 2
    again = features()  # same weights: read from the cache
    assert len(os.listdir(cache)) == 2
    np.testing.assert_array_equal(first["val"][0], again["val"][0])
    # "Retrain": change one weight, save at the same path.
    model = keras.saving.load_model(path)
    kernel = model.layers[-1].kernel
    value = keras.ops.convert_to_numpy(kernel).copy()
    value[0, 0] += 1.0
    kernel.assign(value)
    model.save(path)
    retrained = features()
    assert len(os.listdir(cache)) == 4  # a miss: new files
    assert not np.allclose(first["val"][0], retrained["val"][0])
    # New data at the same path is a miss too.
    np.savez(val, images=images[:4], labels=labels[:4])
    features()
    assert len(os.listdir(cache)) == 5
