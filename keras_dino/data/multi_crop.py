"""DINO's multi-crop augmentation as a `tf.data` map function."""

import tensorflow as tf

from keras_dino.data import color
from keras_dino.data.gaussian_blur import gaussian_blur
from keras_dino.data.random_resized_crop import TF_NAMESPACE
from keras_dino.data.random_resized_crop import resized_crop
from keras_dino.numpy_data.multi_crop_sampler import UNIFORMS_PER_CROP
from keras_dino.numpy_data.multi_crop_sampler import MultiCropSampler


def _maybe_apply(prob, apply, fn, image):
    """`fn(image)` where `apply`, skipping the branch when `prob` is 0 or 1."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(apply, lambda: fn(image), lambda: image)


class MultiCropAugmentation(MultiCropSampler):
    """DINO's multi-crop augmentation (`DataAugmentationDINO`) for `tf.data`.

    Turns one uint8 RGB image into `2 + num_local_crops` float32 crops,
    normalised with `mean` / `std` on [0, 1] pixels: two global crops then
    the local crops: the random resized crop of each box (resized with
    antialiased bicubic interpolation), then the flip, colour jitter,
    grayscale, blur and solarisation drawn by `MultiCropSampler` (which
    defines every distribution, as the reference implementation), then
    the normalisation.

    All randomness comes from stateless random ops seeded by the pair
    `(seed, element_seed)`, so results are reproducible, also under a
    parallel `tf.data` map. The readers in `keras_dino.data` pass each
    element a seed drawn from `tf.data.Dataset.random`, which changes every
    epoch.

    Args:
        The arguments of `keras_dino.numpy_data.MultiCropSampler`, which
        defines the distribution of every random parameter.

    Example:

    ```python
    augment = MultiCropAugmentation(num_local_crops=8, seed=0)
    crops = augment(image, seed=3)  # tuple of 10 float32 tensors
    ds = tf.data.Dataset.zip(images, tf.data.Dataset.random(seed=0))
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ```

    Reference:
        - [Caron et al., 2021](https://arxiv.org/abs/2104.14294),
          `DataAugmentationDINO` in facebookresearch/dino `main_dino.py`.
    """

    def element_seed(self, seed=None):
        """The stateless seed `(seed, element_seed)` of one image.

        Args:
            seed: int scalar (tensor), e.g. the element index or a value
                from `tf.data.Dataset.random`. `None` draws one with a
                stateful op (not reproducible under parallel maps).

        Returns:
            int64 tensor of shape `(2,)`.
        """
        if seed is None:
            seed = tf.random.uniform([], maxval=2**62, dtype=tf.int64)
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        if seed.shape.rank != 0:
            raise ValueError(
                "`seed` must be an int scalar (e.g. the element index). "
                f"Received a tensor of shape {seed.shape}."
            )
        return tf.stack([tf.constant(self._base_seed, tf.int64), seed])

    def sample_params(self, image_shape, seed=None):
        """Samples the random parameters of all crops of one image.

        Args:
            image_shape: `(height, width)` of the image.
            seed: element seed, see `element_seed`.

        Returns:
            Dict of tensors with a leading `num_crops` axis: `boxes` (int32
            `(top, left, height, width)`), `flip`, `color_jitter`,
            `grayscale`, `blur`, `solarize` (bools: whether each op is
            applied), `jitter_factors` (brightness, contrast, saturation
            factors and hue shift), `jitter_order` (int32 permutation of
            the four jitter ops) and `blur_sigma`.
        """
        u = tf.random.stateless_uniform(
            [self.num_crops, UNIFORMS_PER_CROP], seed=self.element_seed(seed)
        )
        return self.params_from_uniforms(
            u, image_shape[0], image_shape[1], xp=TF_NAMESPACE
        )

    def _check_image(self, image):
        image = tf.convert_to_tensor(image)
        if image.shape.rank is not None and image.shape.rank != 3:
            raise ValueError(
                "MultiCropAugmentation expects one image of shape "
                "(height, width, channels); batch after augmenting. "
                f"Received shape {image.shape}."
            )
        image = color.to_rgb(image)
        if not (image.dtype == tf.uint8 or image.dtype.is_floating):
            raise ValueError(
                "Images must be uint8 in [0, 255] or float in [0, 1]. "
                f"Received dtype {image.dtype.name}."
            )
        return image

    def _augment_crop(self, image, params, k):
        size = self.crop_sizes[k]
        crop = resized_crop(image, params["boxes"][k], size, self.antialias)
        crop = tf.ensure_shape(crop, (size, size, 3))
        crop = _maybe_apply(
            self.flip_prob,
            params["flip"][k],
            lambda x: tf.reverse(x, [1]),
            crop,
        )
        crop = _maybe_apply(
            self.color_jitter_prob,
            params["color_jitter"][k],
            lambda x: color.color_jitter(
                x, params["jitter_factors"][k], params["jitter_order"][k]
            ),
            crop,
        )
        crop = _maybe_apply(
            self.grayscale_prob, params["grayscale"][k], color.grayscale, crop
        )
        crop = _maybe_apply(
            self._blur_probs()[k],
            params["blur"][k],
            lambda x: gaussian_blur(
                x, params["blur_sigma"][k], self.blur_kernel_size
            ),
            crop,
        )
        crop = _maybe_apply(
            self._solarize_probs()[k],
            params["solarize"][k],
            color.solarize,
            crop,
        )
        return color.normalize(crop, self.mean, self.std)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, image, seed=None):
        """Returns the tuple of crops of one image.

        Args:
            image: `(H, W, C)` image, uint8 in [0, 255] or float in [0, 1];
                1-channel (grayscale) and 4-channel (RGBA, alpha dropped as
                PIL's `convert("RGB")` does) images are converted to RGB.
            seed: element seed (int scalar), e.g. the element index or a
                value from `tf.data.Dataset.random`; with the augmentation's
                own `seed` it determines every random draw.

        Returns:
            Tuple of `num_crops` float32 tensors: 2 global crops of shape
            `(global_crop_size, global_crop_size, 3)`, then the local crops
            of shape `(local_crop_size, local_crop_size, 3)`.
        """
        image = self._check_image(image)
        params = self.sample_params(tf.shape(image)[:2], seed)
        return tuple(
            self._augment_crop(image, params, k) for k in range(self.num_crops)
        )
