"""The evaluation transform of the reference: resize, centre crop, normalise."""

import tensorflow as tf

from keras_dino.data import color
from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD


class CenterCropTransform:
    """Resize the shorter side, crop the centre, normalise (for evaluation).

    As the reference's k-NN / linear evaluation transform:
    `Resize(resize_size, BICUBIC)` (shorter side to `resize_size`, longer
    side `int(resize_size * long / short)`), `CenterCrop(image_size)`,
    `ToTensor`, `Normalize(mean, std)`. Same call signature as
    `MultiCropAugmentation`, so it plugs into the readers; it uses no
    randomness. It is the one evaluation transform of `keras_dino`: the
    readers use it in `tf.data`, and called on a batch `(N, H, W, C)` (a
    numpy array, say) it is the `preprocessing` of
    `keras_dino.evaluation.extract_features`.

    Args:
        image_size: side of the output image.
        resize_size: size of the shorter side before cropping; `None` means
            `int(image_size * 256 / 224)` (or `crop_fraction`'s).
        mean: per-channel mean subtracted from the [0, 1] pixels.
        std: per-channel standard deviation the pixels are divided by.
        crop_fraction: alternative to `resize_size`: the crop keeps this
            fraction of the resized shorter side, `resize_size =
            round(image_size / crop_fraction)` (224 / 256 = 0.875 in the
            reference).

    Example:

    ```python
    ds = from_image_folder(
        "imagenet/val", CenterCropTransform(224), batch_size=256,
        with_labels=True, shuffle=False, drop_remainder=False,
    )
    ```
    """

    def __init__(
        self,
        image_size=224,
        resize_size=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_fraction=None,
    ):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(
                f"`image_size` must be a positive int. Received: {image_size!r}"
            )
        if crop_fraction is not None:
            if resize_size is not None:
                raise ValueError(
                    "Give `resize_size` or `crop_fraction`, not both. "
                    f"Received: resize_size={resize_size}, "
                    f"crop_fraction={crop_fraction}"
                )
            if not 0.0 < crop_fraction <= 1.0:
                raise ValueError(
                    "`crop_fraction` must be in (0, 1]. Received: "
                    f"{crop_fraction!r}"
                )
            resize_size = int(round(image_size / crop_fraction))
        if resize_size is None:
            resize_size = int(image_size * 256 / 224)
        if resize_size < image_size:
            raise ValueError(
                "`resize_size` must be >= `image_size`. Received: "
                f"resize_size={resize_size}, image_size={image_size}"
            )
        self.image_size = image_size
        self.resize_size = int(resize_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, image, seed=None):
        """The float32 `(image_size, image_size, 3)` image.

        Args:
            image: `(H, W, C)` image or `(N, H, W, C)` batch, C = 1, 3 or
                4; unsigned integers (uint8, uint16: scaled by the dtype's
                maximum) or floats in [0, 1].
            seed: unused (no randomness); for the readers' signature.

        Returns:
            float32 tensor `(image_size, image_size, 3)`, or
            `(N, image_size, image_size, 3)` for a batch.
        """
        del seed
        image = tf.convert_to_tensor(image)
        if image.shape.rank not in (3, 4):
            raise ValueError(
                "Expected an image (H, W, C) or a batch (N, H, W, C). "
                f"Received shape {image.shape}."
            )
        image = color.to_rgb(image)
        shape = tf.shape(image)
        h, w = shape[-3], shape[-2]
        short = tf.minimum(h, w)
        scale = self.resize_size / tf.cast(short, tf.float64)
        new_h = tf.where(
            h == short,
            self.resize_size,
            tf.cast(tf.cast(h, tf.float64) * scale, tf.int32),
        )
        new_w = tf.where(
            w == short,
            self.resize_size,
            tf.cast(tf.cast(w, tf.float64) * scale, tf.int32),
        )
        resized = tf.image.resize(
            image, tf.stack([new_h, new_w]), method="bicubic", antialias=True
        )
        if image.dtype.is_integer:
            resized = resized * (1.0 / image.dtype.max)
        resized = tf.clip_by_value(resized, 0.0, 1.0)
        size = self.image_size
        top = tf.cast(
            tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32
        )
        left = tf.cast(
            tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32
        )
        crop = resized[..., top : top + size, left : left + size, :]
        crop = tf.ensure_shape(crop, image.shape[:-3] + (size, size, 3))
        return color.normalize(crop, self.mean, self.std)

    def get_config(self):
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
