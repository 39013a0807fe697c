"""Gaussian blur with a random sigma per image.

The reference DINO blurs PIL images with `ImageFilter.GaussianBlur(radius=s)`,
where PIL's "radius" is the standard deviation. PIL approximates the Gaussian
with three box blurs whose support is about +-3 sigma, and repeats the edge
pixels. Here the blur is a true separable Gaussian truncated at
`ceil(3 * max_sigma)` pixels on each side (a 13-tap kernel for the default
`max_sigma=2.0`) with edge-replicated borders; smaller sigmas use the same
kernel length, their far taps being ~0.
"""

import tensorflow as tf

from keras_dino.numpy_data.multi_crop_sampler import gaussian_kernel_size  # noqa: F401


def gaussian_kernel_1d(sigma, size):
    """Normalised 1-D Gaussian kernel of odd length `size`.

    Args:
        sigma: float scalar tensor, the standard deviation in pixels.
        size: odd int, the kernel length.

    Returns:
        float32 tensor `(size,)` summing to 1.
    """
    radius = size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / tf.cast(sigma, tf.float32)))
    return kernel / tf.reduce_sum(kernel)


def _replicate_pad(image, radius, axis):
    n = tf.shape(image)[axis]
    index = tf.clip_by_value(tf.range(-radius, n + radius), 0, n - 1)
    return tf.gather(image, index, axis=axis)


def gaussian_blur(image, sigma, kernel_size):
    """Blurs an `(H, W, C)` float image with a Gaussian of std `sigma`.

    Args:
        image: float32 tensor `(H, W, C)`.
        sigma: float scalar tensor, standard deviation in pixels.
        kernel_size: odd int, the kernel length (see `gaussian_kernel_size`).

    Returns:
        The blurred image, same shape and dtype.
    """
    radius = kernel_size // 2
    channels = image.shape[-1]
    kernel = gaussian_kernel_1d(sigma, kernel_size)[:, None, None]
    kernel = tf.tile(kernel, [1, channels, 1])  # (size, C, 1)
    x = _replicate_pad(_replicate_pad(image, radius, 0), radius, 1)[None]
    x = tf.nn.depthwise_conv2d(x, kernel[:, None], [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, kernel[None], [1, 1, 1, 1], "VALID")
    return x[0]
