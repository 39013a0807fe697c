"""DINO's multi-crop augmentation as a `tf.data` map function."""

import random

import tensorflow as tf

from keras_dino.data import color
from keras_dino.data.gaussian_blur import gaussian_blur
from keras_dino.data.gaussian_blur import gaussian_kernel_size
from keras_dino.data.random_resized_crop import UNIFORMS_PER_BOX
from keras_dino.data.random_resized_crop import check_range
from keras_dino.data.random_resized_crop import crop_boxes_from_uniforms
from keras_dino.data.random_resized_crop import resized_crop
from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD

# Layout of the uniform draws of one crop.
_BOX = slice(0, UNIFORMS_PER_BOX)
_FLIP = UNIFORMS_PER_BOX
_JITTER = _FLIP + 1
_FACTORS = slice(_JITTER + 1, _JITTER + 5)
_ORDER = slice(_JITTER + 5, _JITTER + 9)
_GRAY = _JITTER + 9
_BLUR = _GRAY + 1
_SIGMA = _BLUR + 1
_SOLARIZE = _SIGMA + 1
_UNIFORMS_PER_CROP = _SOLARIZE + 1


def _factor_range(name, value, center, max_delta=None):
    """`b` -> `(max(0, 1 - b), 1 + b)` (hue: `h` -> `(-h, h)`), or a pair."""
    if isinstance(value, (int, float)):
        if value < 0 or (max_delta is not None and value > max_delta):
            bound = "" if max_delta is None else f" and <= {max_delta}"
            raise ValueError(
                f"`{name}` must be >= 0{bound}, or a `(min, max)` pair. "
                f"Received: {name}={value}"
            )
        low = center - value
        if max_delta is None:
            low = max(low, 0.0)
        return low, center + value
    if max_delta is None:
        return check_range(name, value, low=0.0)
    return check_range(name, value, low=-max_delta, high=max_delta)


def _probability(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"`{name}` must be a probability in [0, 1]. "
            f"Received: {name}={value}"
        )
    return value


def _maybe_apply(prob, apply, fn, image):
    """`fn(image)` where `apply`, skipping the branch when `prob` is 0 or 1."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(apply, lambda: fn(image), lambda: image)


class MultiCropAugmentation:
    """DINO's multi-crop augmentation (`DataAugmentationDINO`) for `tf.data`.

    Turns one uint8 RGB image into `2 + num_local_crops` float32 crops,
    normalised with `mean` / `std` on [0, 1] pixels: two global crops then
    the local crops. Each crop is, as in the reference implementation:

    1. a random resized crop (torchvision semantics: area uniform in the
       scale range, aspect ratio log-uniform in `ratio` in pixels, 10 tries
       then a central crop) resized with antialiased bicubic interpolation;
    2. a horizontal flip with probability `flip_prob`;
    3. with probability `color_jitter_prob`, brightness, contrast,
       saturation and hue jitter applied in a random order;
    4. grayscale with probability `grayscale_prob`;
    5. Gaussian blur with sigma uniform in `blur_sigma`, with probability
       `global_blur_probs[i]` on global crop `i` and `local_blur_prob` on
       local crops;
    6. solarisation (pixels >= 128/255 inverted) with probability
       `global_solarize_probs[i]` on global crop `i` and
       `local_solarize_prob` on local crops;
    7. normalisation.

    All randomness comes from stateless random ops seeded by the pair
    `(seed, element_seed)`, so results are reproducible, also under a
    parallel `tf.data` map. The readers in `keras_dino.data` pass each
    element a seed drawn from `tf.data.Dataset.random`, which changes every
    epoch.

    Args:
        global_crop_size: side of the global crops in pixels.
        local_crop_size: side of the local crops in pixels.
        num_local_crops: number of local crops (0 or more).
        global_crops_scale: `(min, max)` area fraction of the global crops.
        local_crops_scale: `(min, max)` area fraction of the local crops.
        ratio: `(min, max)` aspect ratio (width / height) of the crops.
        flip_prob: probability of a horizontal flip.
        color_jitter_prob: probability of applying the colour jitter.
        brightness: brightness jitter; a number `b` means a factor uniform
            in `[max(0, 1 - b), 1 + b]`, or give the `(min, max)` range.
        contrast: contrast jitter, same convention as `brightness`.
        saturation: saturation jitter, same convention as `brightness`.
        hue: hue jitter; a number `h` in [0, 0.5] means a shift uniform in
            `[-h, h]` (fraction of the hue circle), or give `(min, max)`.
        grayscale_prob: probability of converting to grayscale.
        global_blur_probs: blur probability of global crops 1 and 2.
        local_blur_prob: blur probability of each local crop.
        blur_sigma: `(min, max)` range of the blur standard deviation, in
            pixels.
        global_solarize_probs: solarisation probability of global crops 1
            and 2.
        local_solarize_prob: solarisation probability of each local crop.
        mean: per-channel mean subtracted from the [0, 1] pixels.
        std: per-channel standard deviation the pixels are divided by.
        antialias: whether the bicubic resize low-pass filters when
            shrinking (PIL, and so the reference, does).
        seed: int seed. `None` picks a random one.

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

    def __init__(
        self,
        global_crop_size=224,
        local_crop_size=96,
        num_local_crops=8,
        global_crops_scale=(0.4, 1.0),
        local_crops_scale=(0.05, 0.4),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=0.5,
        color_jitter_prob=0.8,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        grayscale_prob=0.2,
        global_blur_probs=(1.0, 0.1),
        local_blur_prob=0.5,
        blur_sigma=(0.1, 2.0),
        global_solarize_probs=(0.0, 0.2),
        local_solarize_prob=0.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        antialias=True,
        seed=None,
    ):
        for name, value in (
            ("global_crop_size", global_crop_size),
            ("local_crop_size", local_crop_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive int. Received: "
                    f"{name}={value!r}"
                )
        if not isinstance(num_local_crops, int) or num_local_crops < 0:
            raise ValueError(
                "`num_local_crops` must be an int >= 0. Received: "
                f"num_local_crops={num_local_crops!r}"
            )
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size
        self.num_local_crops = num_local_crops
        self.global_crops_scale = check_range(
            "global_crops_scale", global_crops_scale, low=0.0, high=1.0
        )
        self.local_crops_scale = check_range(
            "local_crops_scale", local_crops_scale, low=0.0, high=1.0
        )
        self.ratio = check_range("ratio", ratio, low=1e-6)
        self.flip_prob = _probability("flip_prob", flip_prob)
        self.color_jitter_prob = _probability(
            "color_jitter_prob", color_jitter_prob
        )
        self.brightness = _factor_range("brightness", brightness, 1.0)
        self.contrast = _factor_range("contrast", contrast, 1.0)
        self.saturation = _factor_range("saturation", saturation, 1.0)
        self.hue = _factor_range("hue", hue, 0.0, max_delta=0.5)
        self.grayscale_prob = _probability("grayscale_prob", grayscale_prob)
        if len(global_blur_probs) != 2 or len(global_solarize_probs) != 2:
            raise ValueError(
                "`global_blur_probs` and `global_solarize_probs` must have "
                "one probability per global crop (2 values). Received: "
                f"global_blur_probs={global_blur_probs!r}, "
                f"global_solarize_probs={global_solarize_probs!r}"
            )
        self.global_blur_probs = tuple(
            _probability("global_blur_probs", p) for p in global_blur_probs
        )
        self.local_blur_prob = _probability("local_blur_prob", local_blur_prob)
        self.blur_sigma = check_range("blur_sigma", blur_sigma, low=1e-6)
        self.global_solarize_probs = tuple(
            _probability("global_solarize_probs", p)
            for p in global_solarize_probs
        )
        self.local_solarize_prob = _probability(
            "local_solarize_prob", local_solarize_prob
        )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                "`mean` and `std` must have 3 values (RGB) and `std` must "
                f"be positive. Received: mean={mean!r}, std={std!r}"
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.antialias = bool(antialias)
        self.seed = seed
        self._base_seed = (
            int(seed) if seed is not None else random.randint(0, 2**31 - 1)
        )
        self._kernel_size = gaussian_kernel_size(self.blur_sigma[1])

    @property
    def num_crops(self):
        """Total number of crops per image: 2 + `num_local_crops`."""
        return 2 + self.num_local_crops

    @property
    def crop_sizes(self):
        """Side length of each crop, in output order."""
        return (self.global_crop_size,) * 2 + (
            self.local_crop_size,
        ) * self.num_local_crops

    def _blur_probs(self):
        return (
            self.global_blur_probs
            + (self.local_blur_prob,) * self.num_local_crops
        )

    def _solarize_probs(self):
        return (
            self.global_solarize_probs
            + (self.local_solarize_prob,) * self.num_local_crops
        )

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
            [self.num_crops, _UNIFORMS_PER_CROP], seed=self.element_seed(seed)
        )
        height, width = image_shape[0], image_shape[1]
        boxes = [
            crop_boxes_from_uniforms(
                height, width, u[:2, _BOX], self.global_crops_scale, self.ratio
            )
        ]
        if self.num_local_crops:
            boxes.append(
                crop_boxes_from_uniforms(
                    height,
                    width,
                    u[2:, _BOX],
                    self.local_crops_scale,
                    self.ratio,
                )
            )
        lows = tf.constant(
            [self.brightness[0], self.contrast[0], self.saturation[0]]
            + [self.hue[0]]
        )
        highs = tf.constant(
            [self.brightness[1], self.contrast[1], self.saturation[1]]
            + [self.hue[1]]
        )
        sigma_lo, sigma_hi = self.blur_sigma
        return {
            "boxes": tf.concat(boxes, axis=0),
            "flip": u[:, _FLIP] < self.flip_prob,
            "color_jitter": u[:, _JITTER] < self.color_jitter_prob,
            "jitter_factors": lows + (highs - lows) * u[:, _FACTORS],
            "jitter_order": tf.argsort(u[:, _ORDER], axis=-1),
            "grayscale": u[:, _GRAY] < self.grayscale_prob,
            "blur": u[:, _BLUR] < tf.constant(self._blur_probs()),
            "blur_sigma": sigma_lo + (sigma_hi - sigma_lo) * u[:, _SIGMA],
            "solarize": u[:, _SOLARIZE] < tf.constant(self._solarize_probs()),
        }

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
                x, params["blur_sigma"][k], self._kernel_size
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

    def get_config(self):
        return {
            "global_crop_size": self.global_crop_size,
            "local_crop_size": self.local_crop_size,
            "num_local_crops": self.num_local_crops,
            "global_crops_scale": self.global_crops_scale,
            "local_crops_scale": self.local_crops_scale,
            "ratio": self.ratio,
            "flip_prob": self.flip_prob,
            "color_jitter_prob": self.color_jitter_prob,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "grayscale_prob": self.grayscale_prob,
            "global_blur_probs": self.global_blur_probs,
            "local_blur_prob": self.local_blur_prob,
            "blur_sigma": self.blur_sigma,
            "global_solarize_probs": self.global_solarize_probs,
            "local_solarize_prob": self.local_solarize_prob,
            "mean": self.mean,
            "std": self.std,
            "antialias": self.antialias,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (
            f"{type(self).__name__}(global_crop_size={self.global_crop_size}, "
            f"local_crop_size={self.local_crop_size}, "
            f"num_local_crops={self.num_local_crops}, seed={self.seed})"
        )
