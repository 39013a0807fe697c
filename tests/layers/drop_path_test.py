"""DropPath: per-sample drop rate, 1 / keep scaling, seeded determinism."""

import numpy as np
import pytest

from keras_dino.layers import DropPath


def test_statistics(tiny):
    rate, n = 0.3, 8192
    x = np.ones((n, 3, 2), "float32")
    out = tiny.np(DropPath(rate, seed=1)(x, training=True))
    per_sample = out.reshape(n, -1)
    # Whole samples are either dropped or kept, never partly.
    assert np.all(per_sample.min(1) == per_sample.max(1))
    kept = per_sample[:, 0] != 0
    np.testing.assert_allclose(per_sample[kept], 1 / (1 - rate), rtol=1e-6)
    # Binomial(8192, 0.3): sd ~ 0.005.
    assert abs((1 - kept.mean()) - rate) < 0.025
    assert abs(out.mean() - 1.0) < 0.04  # unbiased in expectation


def test_identity_at_inference_and_rate_zero(tiny):
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_array_equal(tiny.np(DropPath(0.5)(x)), x)
    np.testing.assert_array_equal(tiny.np(DropPath(0.5)(x, training=False)), x)
    np.testing.assert_array_equal(tiny.np(DropPath(0.0)(x, training=True)), x)


def test_seeded_determinism(tiny):
    x = np.ones((64, 4), "float32")
    a, b = DropPath(0.5, seed=7), DropPath(0.5, seed=7)
    first_a = tiny.np(a(x, training=True))
    np.testing.assert_array_equal(first_a, tiny.np(b(x, training=True)))
    # The layer's SeedGenerator advances: the next call draws a new mask.
    assert not np.array_equal(first_a, tiny.np(a(x, training=True)))
    other = tiny.np(DropPath(0.5, seed=8)(x, training=True))
    assert not np.array_equal(first_a, other)


def test_bad_rate():
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate"):
            DropPath(rate)


def test_config_and_saving(tiny, tmp_path):
    layer = DropPath(0.2, seed=3, name="dp")
    x = np.random.default_rng(1).normal(size=(2, 3)).astype("float32")
    out, cloned, reloaded = tiny.layer_round_trip(layer, x, tmp_path)
    np.testing.assert_array_equal(cloned, out)
    np.testing.assert_array_equal(reloaded, out)
    assert layer.get_config()["rate"] == 0.2
    assert layer.get_config()["seed"] == 3
