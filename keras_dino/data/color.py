"""Colour transforms with torchvision's semantics, on `(H, W, 3)` images.

Images are float in [0, 1]. Each op follows
`torchvision.transforms.functional` (which, for PIL images, follows
`PIL.ImageEnhance`): brightness scales the pixels, contrast blends with the
mean of the grayscale image, saturation blends with the grayscale image, hue
rotates the hue circle (HSV hexcone, `tf.image.adjust_hue`). The result is
clamped to [0, 1] after each op. Core Keras' and `tf.image`'s contrast and
saturation ops use other definitions (per-channel mean, HSV scaling), hence
these.

Grayscale, contrast and saturation are affine maps of the RGB vector of each
pixel, so they run as one `(pixels, 3) @ (3, 3)` matmul plus an offset,
several times faster on CPU than broadcasting over a channel axis of size 3.
"""

import numpy as np
import tensorflow as tf

from keras_dino.layers.device_multi_crop import GRAYSCALE_WEIGHTS

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _gray_matrix():
    """`x @ G` puts the grayscale value of `x` in each of the 3 channels."""
    w = np.array(GRAYSCALE_WEIGHTS, np.float32)[:, None]
    return tf.constant(np.tile(w, [1, 3]))


def affine(image, matrix, offset=None, clip=True):
    """Affine colour map `x @ matrix + offset` of each pixel `x`.

    Args:
        image: float tensor `(H, W, 3)`.
        matrix: float tensor `(3, 3)`; pixels are row vectors, so
            `out[c] = sum_k x[k] * matrix[k, c]`.
        offset: optional float tensor `(3,)`.
        clip: whether to clamp the result to [0, 1].

    Returns:
        float tensor `(H, W, 3)`.
    """
    shape = tf.shape(image)
    pixels = tf.reshape(image, [-1, 3]) @ matrix
    if offset is not None:
        pixels = tf.nn.bias_add(pixels, offset)
    if clip:
        pixels = tf.clip_by_value(pixels, 0.0, 1.0)
    return tf.reshape(pixels, shape)


def rgb_to_grayscale(image):
    """ITU-R 601-2 luma, as PIL's `convert("L")`, keeping a channel axis.

    Args:
        image: float tensor `(..., 3)`.

    Returns:
        float tensor `(..., 1)`.
    """
    w = tf.constant(GRAYSCALE_WEIGHTS, dtype=image.dtype)
    return tf.tensordot(image, w, axes=1)[..., None]


def grayscale(image, apply=True):
    """Converts an `(H, W, 3)` image to grayscale replicated on 3 channels.

    Uses the ITU-R 601-2 weights (0.299, 0.587, 0.114) of PIL and
    torchvision.

    Args:
        image: float tensor `(H, W, 3)`.
        apply: bool scalar (tensor); when false the image is returned as is.

    Returns:
        float tensor `(H, W, 3)`.
    """
    eye = tf.constant(np.eye(3, dtype=np.float32))
    matrix = tf.where(tf.cast(apply, tf.bool), _gray_matrix(), eye)
    return affine(image, matrix, clip=False)


def adjust_brightness(image, factor):
    """Multiplies the pixels by `factor` and clamps to [0, 1]."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
    """Blends the image with the mean of its grayscale version."""
    w = tf.constant(np.array(GRAYSCALE_WEIGHTS, np.float32)[:, None])
    mean = tf.reduce_mean(tf.reshape(image, [-1, 3]) @ w)
    offset = tf.fill([3], (1.0 - factor) * mean)
    return affine(
        image, factor * tf.constant(np.eye(3, dtype=np.float32)), offset
    )


def adjust_saturation(image, factor):
    """Blends the image with its grayscale version."""
    eye = tf.constant(np.eye(3, dtype=np.float32))
    matrix = factor * eye + (1.0 - factor) * _gray_matrix()
    return affine(image, matrix)


def adjust_hue(image, delta):
    """Rotates the hue by `delta` (a fraction of the hue circle)."""
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def _jitter_op(image, index, factors):
    return tf.switch_case(
        index,
        [
            lambda: adjust_brightness(image, factors[BRIGHTNESS]),
            lambda: adjust_contrast(image, factors[CONTRAST]),
            lambda: adjust_saturation(image, factors[SATURATION]),
            lambda: adjust_hue(image, factors[HUE]),
        ],
    )


def color_jitter(image, factors, order):
    """Applies brightness, contrast, saturation and hue in a given order.

    Args:
        image: float tensor `(H, W, 3)` in [0, 1].
        factors: float tensor `(4,)`: brightness factor, contrast factor,
            saturation factor, hue shift.
        order: int tensor `(4,)`, a permutation of `[0, 1, 2, 3]` (the
            indices of brightness, contrast, saturation, hue) giving the
            order in which the ops are applied.

    Returns:
        The jittered image, float in [0, 1].
    """
    factors = tf.cast(factors, tf.float32)
    order = tf.cast(order, tf.int32)
    for step in range(4):
        image = _jitter_op(image, order[step], factors)
    return image


def solarize(image, apply=True, threshold=128.0 / 255.0):
    """Inverts the pixels at or above `threshold`, as `PIL.ImageOps`.

    Args:
        image: float tensor in [0, 1].
        apply: bool scalar (tensor); when false the image is returned as is.
        threshold: the default is PIL's 128 on the 0..255 scale.

    Returns:
        float tensor, same shape.
    """
    invert = (image >= threshold) & tf.cast(apply, tf.bool)
    return tf.where(invert, 1.0 - image, image)


def normalize(image, mean, std):
    """`(image - mean) / std` per channel, for an `(H, W, 3)` image."""
    inv_std = [1.0 / s for s in std]
    offset = tf.constant([-m * i for m, i in zip(mean, inv_std)], tf.float32)
    return affine(image, tf.linalg.diag(inv_std), offset, clip=False)


def to_rgb(image):
    """RGB channels of an `(..., C)` image: gray repeated, alpha dropped.

    As PIL's `convert("RGB")` for grayscale and RGBA images.

    Args:
        image: tensor with 1, 3 or 4 channels on its last axis.

    Returns:
        The tensor with 3 channels.
    """
    channels = image.shape[-1]
    if channels == 1:
        return tf.concat([image] * 3, axis=-1)
    if channels == 4:
        return image[..., :3]
    if channels is not None and channels != 3:
        raise ValueError(
            "Images must have 1 (grayscale), 3 (RGB) or 4 (RGBA) "
            f"channels. Received shape {image.shape}."
        )
    return image
