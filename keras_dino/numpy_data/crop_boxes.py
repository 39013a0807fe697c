"""Random-resized-crop box sampling with torchvision's semantics.

`torchvision.transforms.RandomResizedCrop.get_params` samples the crop area
uniformly in `scale` (as a fraction of the image area) and the aspect ratio
log-uniformly in `ratio`, in pixels; a try is accepted when the rounded box
fits in the image; after 10 rejected tries it falls back to a central crop
whose aspect ratio is clamped to `ratio`. TensorFlow's
`sample_distorted_bounding_box` and keras-cv's `RandomCropAndResize` follow
other rules, so the sampling is written here once, on a NumPy-like array
namespace: NumPy on the host (`keras_dino.numpy_data`, no TensorFlow) and
`tf.experimental.numpy` inside `tf.data` graphs (`keras_dino.data`).
"""

import math

import numpy as np

NUM_TRIES = 10
UNIFORMS_PER_BOX = NUM_TRIES * 4


def check_range(name, value, low=None, high=None):
    """Checks that `value` is an increasing `(min, max)` pair of numbers.

    Args:
        name: name of the argument, used in the error message.
        value: the value to check.
        low: optional lower bound for both entries.
        high: optional upper bound for both entries.

    Returns:
        The pair as a tuple of two Python floats.
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a pair of numbers `(min, max)`. "
            f"Received: {name}={value!r}"
        ) from None
    if lo > hi:
        raise ValueError(
            f"`{name}` must satisfy min <= max. Received: {name}={value!r}"
        )
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}]. Received: {name}={value!r}"
        )
    return lo, hi


def crop_boxes_from_uniforms(height, width, uniforms, scale, ratio, xp=np):
    """Turns uniform random numbers into torchvision crop boxes.

    This is `torchvision.transforms.RandomResizedCrop.get_params`,
    vectorised over any leading dimensions of `uniforms`. All 10 tries are
    computed at once and the first accepted one is kept.

    Args:
        height: image height in pixels: an int, or an array that
            broadcasts against `uniforms.shape[:-1]` (one per box).
        width: image width in pixels, as `height`.
        uniforms: float array of shape `(..., 40)` with values in `[0, 1)`:
            for each of the 10 tries, the area, log-aspect-ratio, top offset
            and left offset draws.
        scale: `(min, max)` crop area as a fraction of the image area.
        ratio: `(min, max)` crop aspect ratio (width / height), in pixels.
        xp: the array namespace: `numpy` (default) or
            `tensorflow.experimental.numpy`.

    Returns:
        int32 array of shape `(..., 4)`: `(top, left, crop_height,
        crop_width)` of each box.
    """
    u = xp.asarray(uniforms, dtype=xp.float64)
    h_img = xp.asarray(height, dtype=xp.float64)
    w_img = xp.asarray(width, dtype=xp.float64)
    h_tries, w_tries = h_img[..., None], w_img[..., None]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])

    # Draws of try t are u[..., 4t : 4t + 4]: area, log-ratio, top, left.
    area = h_tries * w_tries * (scale[0] + (scale[1] - scale[0]) * u[..., 0::4])
    aspect = xp.exp(log_lo + (log_hi - log_lo) * u[..., 1::4])
    w = xp.round(xp.sqrt(area * aspect))  # half to even, as Python's round
    h = xp.round(xp.sqrt(area / aspect))
    valid = (w > 0) & (w <= w_tries) & (h > 0) & (h <= h_tries)
    count = xp.cumsum(xp.asarray(valid, dtype=xp.int32), axis=-1)
    first = valid & (count == 1)
    any_valid = count[..., -1] > 0

    def pick(x):
        return xp.sum(xp.where(first, x, 0.0), axis=-1)

    h_try, w_try = pick(h), pick(w)
    top_u, left_u = pick(u[..., 2::4]), pick(u[..., 3::4])

    # Fallback: the central crop, its aspect ratio clamped to `ratio`.
    in_ratio = w_img / h_img
    w_fb = xp.where(in_ratio > ratio[1], xp.round(h_img * ratio[1]), w_img)
    h_fb = xp.where(in_ratio < ratio[0], xp.round(w_img / ratio[0]), h_img)
    w_fb = xp.minimum(w_fb, w_img)
    h_fb = xp.minimum(h_fb, h_img)

    crop_h = xp.where(any_valid, h_try, h_fb)
    crop_w = xp.where(any_valid, w_try, w_fb)
    top_random = xp.minimum(
        xp.floor(top_u * (h_img - crop_h + 1)), h_img - crop_h
    )
    left_random = xp.minimum(
        xp.floor(left_u * (w_img - crop_w + 1)), w_img - crop_w
    )
    top = xp.where(any_valid, top_random, xp.floor((h_img - crop_h) / 2))
    left = xp.where(any_valid, left_random, xp.floor((w_img - crop_w) / 2))
    boxes = xp.stack([top, left, crop_h, crop_w], axis=-1)
    return xp.asarray(boxes, dtype=xp.int32)
