"""Random resized crops with torchvision's semantics, for `tf.data`.

The box sampling (`torchvision.transforms.RandomResizedCrop.get_params`) is
written once, in `keras_dino.numpy_data.crop_boxes`, on a NumPy-like array
namespace; here it runs on the few TensorFlow ops it needs, inside
`tf.data` graphs.
"""

import random
import types

import tensorflow as tf

from keras_dino.data import color
from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD
from keras_dino.numpy_data import crop_boxes
from keras_dino.numpy_data.crop_boxes import UNIFORMS_PER_BOX
from keras_dino.numpy_data.crop_boxes import check_range

# The NumPy functions `crop_boxes_from_uniforms` uses, as TensorFlow ops
# (`tf.experimental.numpy` needs a global switch for some of them).
TF_NAMESPACE = types.SimpleNamespace(
    argsort=tf.argsort,
    asarray=lambda x, dtype: tf.cast(x, dtype),
    concatenate=tf.concat,
    float64=tf.float64,
    int32=tf.int32,
    cumsum=tf.cumsum,
    exp=tf.exp,
    floor=tf.floor,
    minimum=tf.minimum,
    round=tf.round,  # half to even, as numpy and Python
    sqrt=tf.sqrt,
    stack=tf.stack,
    sum=tf.reduce_sum,
    where=tf.where,
)


def crop_boxes_from_uniforms(height, width, uniforms, scale, ratio):
    """`keras_dino.numpy_data.crop_boxes.crop_boxes_from_uniforms` in TF.

    Args:
        height: image height in pixels, int scalar tensor.
        width: image width in pixels, int scalar tensor.
        uniforms: float tensor `(..., 40)` of uniform draws in `[0, 1)`.
        scale: `(min, max)` crop area as a fraction of the image area.
        ratio: `(min, max)` crop aspect ratio (width / height), in pixels.

    Returns:
        int32 tensor of shape `(..., 4)`: `(top, left, crop_height,
        crop_width)` of each box.
    """
    return crop_boxes.crop_boxes_from_uniforms(
        height, width, uniforms, scale, ratio, xp=TF_NAMESPACE
    )


def sample_crop_boxes(
    image_shape,
    num_boxes,
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    seed=(0, 0),
):
    """Samples random-resized-crop boxes for an image of a given size.

    Useful to inspect or test the box distribution without cropping images.

    Args:
        image_shape: `(height, width)` of the image in pixels.
        num_boxes: number of independent boxes to sample.
        scale: `(min, max)` crop area as a fraction of the image area.
        ratio: `(min, max)` crop aspect ratio (width / height), in pixels.
        seed: stateless seed, a pair of ints.

    Returns:
        int32 tensor of shape `(num_boxes, 4)`: `(top, left, crop_height,
        crop_width)` of each box.

    Example:

    >>> boxes = sample_crop_boxes((480, 640), 1000, scale=(0.05, 0.4))
    >>> boxes.shape
    TensorShape([1000, 4])
    """
    scale = check_range("scale", scale, low=0.0)
    ratio = check_range("ratio", ratio, low=0.0)
    uniforms = tf.random.stateless_uniform(
        [num_boxes, UNIFORMS_PER_BOX], seed=tf.cast(seed, tf.int64)
    )
    return crop_boxes_from_uniforms(
        image_shape[0], image_shape[1], uniforms, scale, ratio
    )


def resized_crop(image, box, size, antialias=True, method="bicubic"):
    """Crops `image` to `box` and resizes the crop to `size` x `size`.

    The resize is bicubic (Keys cubic, a = -0.5, as PIL's BICUBIC filter),
    with antialiasing when shrinking, as PIL (and so the reference DINO
    pipeline, which runs torchvision transforms on PIL images) does:
    `tf.image.resize(..., method="bicubic", antialias=True)`.

    Args:
        image: `(H, W, C)` image tensor, uint8 in [0, 255] or float in [0, 1].
        box: int tensor `(top, left, crop_height, crop_width)`.
        size: output side length in pixels.
        antialias: whether to low-pass filter when shrinking.
        method: `tf.image.resize` method; `"bicubic"` (DINO's multi-crop)
            or `"bilinear"` (torchvision's `RandomResizedCrop` default, as
            in the reference linear evaluation).

    Returns:
        float32 tensor `(size, size, C)` with values clipped to [0, 1].
    """
    crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]

    def resize(antialias):
        return tf.image.resize(
            crop, (size, size), method=method, antialias=antialias
        )

    if antialias:
        # Antialiasing only changes shrinking; the plain bicubic kernel is
        # ~3x faster and equal (to ~1e-3 of a level) when enlarging.
        enlarging = (box[2] <= size) & (box[3] <= size)
        out = tf.cond(enlarging, lambda: resize(False), lambda: resize(True))
    else:
        out = resize(False)
    if image.dtype.is_integer:
        out = out * (1.0 / image.dtype.max)
    return tf.clip_by_value(out, 0.0, 1.0)


class RandomResizedCropTransform:
    """Random resized crop, horizontal flip, normalisation (one crop).

    The training transform of the reference linear evaluation:
    `RandomResizedCrop(image_size)` (torchvision's box sampling, bilinear
    resize), `RandomHorizontalFlip()`, `ToTensor`, `Normalize(mean, std)`.
    Same call signature as `MultiCropAugmentation`, so it plugs into the
    readers; all randomness is stateless, seeded by `(seed,
    element_seed)`.

    Args:
        image_size: side of the output image.
        scale: `(min, max)` crop area as a fraction of the image area.
        ratio: `(min, max)` crop aspect ratio (width / height).
        flip_prob: probability of a horizontal flip.
        interpolation: `"bilinear"` (torchvision's default) or
            `"bicubic"`.
        mean: per-channel mean subtracted from the [0, 1] pixels.
        std: per-channel standard deviation the pixels are divided by.
        seed: int seed; `None` picks a random one.

    Example:

    ```python
    ds = from_arrays(x_train, y_train, RandomResizedCropTransform(224),
                     batch_size=256, with_labels=True, seed=0)
    ```
    """

    def __init__(
        self,
        image_size=224,
        scale=(0.08, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=0.5,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        seed=None,
    ):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(
                f"`image_size` must be a positive int. Received: {image_size!r}"
            )
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                "`interpolation` must be 'bilinear' or 'bicubic'. Received: "
                f"{interpolation!r}"
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(
                f"`flip_prob` must be in [0, 1]. Received: {flip_prob!r}"
            )
        self.image_size = image_size
        self.scale = check_range("scale", scale, low=0.0)
        self.ratio = check_range("ratio", ratio, low=0.0)
        self.flip_prob = float(flip_prob)
        self.interpolation = interpolation
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = seed
        self._base_seed = (
            int(seed) if seed is not None else random.randint(0, 2**31 - 1)
        )

    @tf.autograph.experimental.do_not_convert
    def __call__(self, image, seed=0):
        """The float32 `(image_size, image_size, 3)` crop of one image.

        Args:
            image: `(H, W, C)` image, C = 1, 3 or 4; unsigned integers
                (scaled by the dtype's maximum) or floats in [0, 1].
            seed: element seed (int scalar), e.g. from
                `tf.data.Dataset.random`.

        Returns:
            float32 tensor `(image_size, image_size, 3)`.
        """
        image = color.to_rgb(tf.convert_to_tensor(image))
        element_seed = tf.stack(
            [
                tf.constant(self._base_seed, tf.int64),
                tf.cast(tf.convert_to_tensor(seed), tf.int64),
            ]
        )
        uniforms = tf.random.stateless_uniform(
            [UNIFORMS_PER_BOX + 1], seed=element_seed
        )
        shape = tf.shape(image)
        box = crop_boxes_from_uniforms(
            shape[0],
            shape[1],
            uniforms[:UNIFORMS_PER_BOX],
            self.scale,
            self.ratio,
        )
        crop = resized_crop(
            image, box, self.image_size, method=self.interpolation
        )
        crop = tf.cond(
            uniforms[UNIFORMS_PER_BOX] < self.flip_prob,
            lambda: tf.reverse(crop, axis=[1]),
            lambda: crop,
        )
        crop = tf.ensure_shape(crop, (self.image_size, self.image_size, 3))
        return color.normalize(crop, self.mean, self.std)

    def get_config(self):
        return {
            "image_size": self.image_size,
            "scale": self.scale,
            "ratio": self.ratio,
            "flip_prob": self.flip_prob,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
