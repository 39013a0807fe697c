"""DeviceMultiCropAugmentation against NumPy and PIL, on every backend."""

import keras
import numpy as np
import pytest
from PIL import Image

from keras_dino.layers import DeviceMultiCropAugmentation
from keras_dino.layers.device_multi_crop import gaussian_blur
from keras_dino.numpy_data import MultiCropSampler

GRAY = np.array([0.299, 0.587, 0.114], np.float32)
# No normalisation, so crops compare with [0, 1] references directly.
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
KEYS = ("flip", "color_jitter", "grayscale", "blur", "solarize")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def params(boxes, **overrides):
    """Parameters of `(B, K)` crops with every op off unless overridden."""
    boxes = np.asarray(boxes, np.int32)
    shape = boxes.shape[:2]
    p = {
        "boxes": boxes,
        "jitter_factors": np.ones(shape + (4,), np.float32),
        "jitter_order": np.broadcast_to(
            np.arange(4, dtype=np.int32), shape + (4,)
        ).copy(),
        "blur_sigma": np.ones(shape, np.float32),
        **{k: np.zeros(shape, bool) for k in KEYS},
    }
    p["jitter_factors"][..., 3] = 0.0
    p.update(overrides)
    return p


def run(layer, images, p):
    """The crops, through one compiled function on JAX (op-by-op dispatch
    compiles every op separately: ~20x slower for these tests)."""
    inputs = {"images": images, **p}
    if keras.backend.backend() == "jax":
        import jax

        crops = jax.jit(layer)(inputs)
    else:
        crops = layer(inputs)
    return [to_numpy(c) for c in crops]


# --- resize: PIL's bicubic resize of the crop ------------------------------


def pil_resized_crop(image, box, size):
    """torchvision's `resized_crop` on a float image: PIL crop + BICUBIC."""
    top, left, h, w = box
    channels = [
        np.asarray(
            Image.fromarray(image[top : top + h, left : left + w, c]).resize(
                (size, size), Image.Resampling.BICUBIC
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def test_resize_and_flip_match_pil():
    rng = np.random.default_rng(0)
    # Two images of different sizes padded into a 24 x 30 canvas.
    images = rng.random((2, 24, 30, 3), dtype=np.float32)
    images[1, 20:] = 0.0
    images[1, :, 26:] = 0.0
    # Shrinking (antialiased), enlarging, non-square, whole image.
    global_boxes = [
        [[0, 0, 24, 30], [3, 5, 7, 11]],
        [[2, 1, 18, 25], [0, 0, 20, 26]],
    ]
    local_boxes = [
        [[10, 12, 5, 4], [1, 2, 20, 9]],
        [[4, 4, 3, 3], [5, 0, 15, 26]],
    ]
    boxes = np.concatenate([global_boxes, local_boxes], axis=1)
    flip = np.array([[False, True, True, False], [True, False, False, True]])
    layer = DeviceMultiCropAugmentation(12, 6, 2, **RAW)
    crops = run(layer, images, params(boxes, flip=flip))
    for b in range(2):
        for k in range(4):
            size = 12 if k < 2 else 6
            expected = pil_resized_crop(images[b], boxes[b, k], size)
            if flip[b, k]:
                expected = expected[:, ::-1]
            np.testing.assert_allclose(crops[k][b], expected, atol=2e-5)


# --- colour, grayscale, blur, solarise: NumPy references -------------------


def np_hue(x, delta):
    r, g, b = np.moveaxis(x, -1, 0)
    v, m = x.max(-1), x.min(-1)
    c = v - m
    safe = np.where(c > 0, c, 1.0)
    h = np.where(
        v == r,
        ((g - b) / safe) % 6,
        np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = (np.where(c > 0, h / 6, 0.0) + delta) % 1.0
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    i = np.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(int) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(x)
    for k, rgb in enumerate(choices):
        out = np.where((i == k)[..., None], np.stack(rgb, -1), out)
    return np.clip(out, 0.0, 1.0)


def np_jitter(x, factors, order):
    for op in order:
        f = factors[op]
        gray = x @ GRAY
        if op == 0:
            x = np.clip(x * f, 0, 1)
        elif op == 1:
            x = np.clip(f * x + (1 - f) * gray.mean(), 0, 1)
        elif op == 2:
            x = np.clip(f * x + (1 - f) * gray[..., None], 0, 1)
        else:
            x = np_hue(x, f)
    return x


def np_blur(x, sigma, size):
    radius = size // 2
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(
            kernel[t] * np.take(padded, np.arange(t, t + n), axis=axis)
            for t in range(size)
        )
    return x


def np_ops(x, p, b, k, kernel_size):
    if p["color_jitter"][b, k]:
        x = np_jitter(x, p["jitter_factors"][b, k], p["jitter_order"][b, k])
    if p["grayscale"][b, k]:
        x = np.repeat((x @ GRAY)[..., None], 3, -1)
    if p["blur"][b, k]:
        x = np_blur(x, p["blur_sigma"][b, k], kernel_size)
    if p["solarize"][b, k]:
        x = np.where(x >= 128 / 255, 1 - x, x)
    return x


def test_pixel_ops_match_numpy():
    # Crops of the whole image at its own size: the resize is the identity
    # (cubic(0) = 1, cubic(+-1) = cubic(+-2) = 0), so the ops see the image.
    rng = np.random.default_rng(1)
    batch, size = 6, 10
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    sampler = MultiCropSampler(size, size, 2, blur_sigma=(0.5, 1.5), seed=0)
    p = sampler.sample([(size, size)] * batch, rng=3)
    p["boxes"][:] = [0, 0, size, size]
    p["flip"][:] = False
    # Every op on and off at least once, every jitter op at every position.
    p["color_jitter"][:, :2] = [True, False]
    p["grayscale"][:2] = [[False] * 4, [True] * 4]
    p["blur"][:, 2:] = [True, False]
    p["solarize"][:, 3] = True
    p["jitter_order"][:4, 0] = [
        [0, 1, 2, 3],
        [1, 2, 3, 0],
        [2, 3, 0, 1],
        [3, 0, 1, 2],
    ]
    layer = DeviceMultiCropAugmentation.from_sampler(sampler, **RAW)
    assert layer.blur_kernel_size == 11
    crops = run(layer, images, p)
    for b in range(batch):
        for k in range(4):
            expected = np_ops(images[b].astype(np.float64), p, b, k, 11)
            np.testing.assert_allclose(crops[k][b], expected, atol=2e-5)


@pytest.mark.parametrize("size, block_size", [(70, 32), (9, 32), (5, 2)])
def test_blocked_blur_matches_numpy(size, block_size):
    """The banded blur in blocks (several with a last one that runs past
    the crop; one block; a kernel wider than the crop and its blocks) is
    the dense blur."""
    rng = np.random.default_rng(size + block_size)
    x = rng.random((2, 3, 3, size, size), dtype=np.float32)
    sigma = rng.uniform(0.1, 2.0, (2, 3)).astype(np.float32)
    blurred = keras.ops.convert_to_numpy(
        gaussian_blur(
            keras.ops.convert_to_tensor(x),
            keras.ops.convert_to_tensor(sigma),
            13,
            block_size=block_size,
        )
    )
    for b in range(2):
        for k in range(3):
            crop = x[b, k].transpose(1, 2, 0).astype(np.float64)
            expected = np_blur(crop, sigma[b, k], 13).transpose(2, 0, 1)
            np.testing.assert_allclose(blurred[b, k], expected, atol=2e-6)


def test_matches_the_tf_data_pipeline():
    # Same parameters through `keras_dino.data.MultiCropAugmentation`, on a
    # uint8 image with the ImageNet normalisation (tf.image's antialiased
    # bicubic, not PIL's: equal to ~1e-2 of the normalised range near
    # strong edges).
    import tensorflow as tf

    from keras_dino.data import MultiCropAugmentation

    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), np.uint8)
    augment = MultiCropAugmentation(16, 8, 3, seed=4)
    tf_params = augment.sample_params(tf.constant([30, 40]), seed=5)
    expected = augment(image, seed=5)
    p = {k: v.numpy()[None] for k, v in tf_params.items()}
    crops = run(
        DeviceMultiCropAugmentation.from_sampler(augment), image[None], p
    )
    for crop, reference in zip(crops, expected):
        difference = np.abs(crop[0] - reference.numpy())
        assert difference.mean() < 5e-3 and difference.max() < 0.1


# --- layer API --------------------------------------------------------------


def test_config_round_trip_and_output_shapes():
    layer = DeviceMultiCropAugmentation(16, 8, 3, blur_kernel_size=5, name="a")
    clone = DeviceMultiCropAugmentation.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    shapes = layer.compute_output_shape({"images": (4, 32, 32, 3)})
    assert shapes == ((4, 16, 16, 3),) * 2 + ((4, 8, 8, 3),) * 3
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(restored, DeviceMultiCropAugmentation)
    assert restored.num_crops == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_crop_size=0), "global_crop_size"),
        (dict(num_local_crops=-1), "num_local_crops"),
        (dict(blur_kernel_size=4), "odd"),
        (dict(std=(1.0, 0.0, 1.0)), "std"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceMultiCropAugmentation(**kwargs)


def test_bad_inputs_are_clear_errors():
    layer = DeviceMultiCropAugmentation(8, 4, 1)
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="dict with `images`"):
        layer(images)
    with pytest.raises(ValueError, match="missing the crop parameters"):
        layer({"images": images, "boxes": np.zeros((1, 3, 4), np.int32)})
    with pytest.raises(ValueError, match="for 4 crops per image"):
        layer({"images": images, **params([[[0, 0, 8, 8]] * 4])})
