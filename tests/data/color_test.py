import colorsys

import numpy as np
import pytest
import tensorflow as tf

from keras_dino.data import color

# tf.data only (keras_dino.data never reads the Keras backend): these run
# in the tensorflow pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("tensorflow")


def image(seed=0, shape=(9, 11, 3)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def gray(x):
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_brightness_scales_and_clamps(factor):
    x = image()
    np.testing.assert_allclose(
        color.adjust_brightness(x, factor), np.clip(x * factor, 0, 1)
    )


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_contrast_blends_with_grayscale_mean(factor):
    x = image(1)
    expected = np.clip(factor * x + (1 - factor) * gray(x).mean(), 0, 1)
    np.testing.assert_allclose(
        color.adjust_contrast(x, factor), expected, atol=1e-6
    )


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_saturation_blends_with_grayscale(factor):
    x = image(2)
    expected = np.clip(factor * x + (1 - factor) * gray(x)[..., None], 0, 1)
    np.testing.assert_allclose(
        color.adjust_saturation(x, factor), expected, atol=1e-6
    )


@pytest.mark.parametrize("delta", [-0.1, 0.03, 0.1])
def test_hue_rotates_the_hexcone(delta):
    x = image(3, (5, 6, 3))
    expected = np.array(
        [
            colorsys.hsv_to_rgb((h + delta) % 1.0, *colorsys.rgb_to_hsv(*p)[1:])
            for p in x.reshape(-1, 3)
            for h in [colorsys.rgb_to_hsv(*p)[0]]
        ]
    ).reshape(x.shape)
    np.testing.assert_allclose(color.adjust_hue(x, delta), expected, atol=1e-5)


def test_grayscale_uses_itu_601_weights_on_three_channels():
    x = image(4)
    out = color.grayscale(x).numpy()
    assert out.shape == x.shape
    for c in range(3):
        np.testing.assert_allclose(out[..., c], gray(x), atol=1e-6)


def test_solarize_inverts_from_128():
    x = np.array([0, 127, 128, 255], np.float32).reshape(1, 4, 1) / 255
    out = color.solarize(np.repeat(x, 3, axis=-1)).numpy()[..., 0] * 255
    np.testing.assert_allclose(out, [[0, 127, 127, 0]], atol=1e-4)


def test_jitter_order_is_respected():
    x = image(5)
    factors = tf.constant([1.3, 0.7, 1.2, 0.08])
    steps = [
        lambda y: color.adjust_brightness(y, 1.3),
        lambda y: color.adjust_contrast(y, 0.7),
        lambda y: color.adjust_saturation(y, 1.2),
        lambda y: color.adjust_hue(y, 0.08),
    ]
    outputs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        expected = x
        for i in order:
            expected = steps[i](expected)
        out = color.color_jitter(x, factors, tf.constant(order))
        np.testing.assert_allclose(out, expected, atol=1e-6)
        outputs.append(out.numpy())
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


def test_normalize():
    x = image(6)
    out = color.normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(out, expected, atol=1e-5)
