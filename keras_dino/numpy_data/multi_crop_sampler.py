"""The random parameters of DINO's multi-crop augmentation, in NumPy.

One definition of the distribution of every random draw of
`DataAugmentationDINO` (crop boxes, flips, colour jitter, grayscale, blur,
solarisation), shared by the `tf.data` pipeline
(`keras_dino.data.MultiCropAugmentation`, which evaluates it with
TensorFlow ops) and the TensorFlow-free host side of the device
augmentation (`keras_dino.layers.DeviceMultiCropAugmentation`, evaluated
with NumPy here).
"""

import math
import random

import numpy as np

from keras_dino.layers.device_multi_crop import PARAM_KEYS  # noqa: F401
from keras_dino.layers.device_multi_crop import check_crop_arguments
from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD
from keras_dino.numpy_data.crop_boxes import UNIFORMS_PER_BOX
from keras_dino.numpy_data.crop_boxes import check_range
from keras_dino.numpy_data.crop_boxes import crop_boxes_from_uniforms

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
UNIFORMS_PER_CROP = _SOLARIZE + 1


def gaussian_kernel_size(max_sigma):
    """Kernel length used for sigmas up to `max_sigma`: 2*ceil(3*s) + 1."""
    return 2 * int(math.ceil(3.0 * max_sigma)) + 1


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


class MultiCropSampler:
    """Samples the random parameters of DINO's multi-crop augmentation.

    Holds the configuration of `DataAugmentationDINO` and turns uniform
    random numbers into the parameters of each crop, with the reference's
    distributions:

    1. a random resized crop box (torchvision semantics: area uniform in
       the scale range, aspect ratio log-uniform in `ratio` in pixels, 10
       tries then a central crop);
    2. a horizontal flip with probability `flip_prob`;
    3. with probability `color_jitter_prob`, brightness, contrast,
       saturation and hue jitter, with factors uniform in their ranges,
       applied in a uniformly random order;
    4. grayscale with probability `grayscale_prob`;
    5. Gaussian blur with sigma uniform in `blur_sigma`, with probability
       `global_blur_probs[i]` on global crop `i` and `local_blur_prob` on
       local crops;
    6. solarisation (pixels >= 128/255 inverted) with probability
       `global_solarize_probs[i]` on global crop `i` and
       `local_solarize_prob` on local crops.

    `keras_dino.data.MultiCropAugmentation` (`tf.data`) is this sampler
    plus the image ops in TensorFlow; on the host of the device path,
    `sample` draws the parameters of a batch with NumPy.

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
    sampler = MultiCropSampler(num_local_crops=8, seed=0)
    params = sampler.sample([(480, 640), (375, 500)])
    params["boxes"].shape  # (2, 10, 4): (top, left, height, width)
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
        check_crop_arguments(
            global_crop_size, local_crop_size, num_local_crops, mean, std
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
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.antialias = bool(antialias)
        self.seed = seed
        self._base_seed = (
            int(seed) if seed is not None else random.randint(0, 2**31 - 1)
        )
        self._rng = np.random.default_rng(self._base_seed)

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

    @property
    def blur_kernel_size(self):
        """Length of the Gaussian kernel: `2 * ceil(3 * max_sigma) + 1`."""
        return gaussian_kernel_size(self.blur_sigma[1])

    def params_from_uniforms(self, uniforms, height, width, xp=np):
        """Turns uniform draws into the parameters of every crop.

        Args:
            uniforms: float32 array `(..., num_crops, UNIFORMS_PER_CROP)`
                of uniform draws in `[0, 1)`.
            height: image height(s) in pixels, an int or an array that
                broadcasts against `uniforms.shape[:-1]`.
            width: image width(s), as `height`.
            xp: the array namespace: `numpy` or the TensorFlow ops of
                `keras_dino.data.random_resized_crop.TF_NAMESPACE`.

        Returns:
            Dict of arrays with leading dimensions `uniforms.shape[:-1]`:
            `boxes` (int32 `(..., 4)`: top, left, height, width),
            `flip`, `color_jitter`, `grayscale`, `blur`, `solarize` (bool:
            whether each op is applied), `jitter_factors` (float32
            `(..., 4)`: brightness, contrast and saturation factors and
            hue shift), `jitter_order` (int32 `(..., 4)`, a permutation of
            the four jitter ops) and `blur_sigma` (float32).
        """
        u = uniforms
        boxes = [
            crop_boxes_from_uniforms(
                height,
                width,
                u[..., :2, _BOX],
                self.global_crops_scale,
                self.ratio,
                xp=xp,
            )
        ]
        if self.num_local_crops:
            boxes.append(
                crop_boxes_from_uniforms(
                    height,
                    width,
                    u[..., 2:, _BOX],
                    self.local_crops_scale,
                    self.ratio,
                    xp=xp,
                )
            )
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        lows = np.array([r[0] for r in ranges], np.float32)
        spans = np.array([r[1] - r[0] for r in ranges], np.float32)
        sigma_lo, sigma_hi = self.blur_sigma
        order = xp.argsort(u[..., _ORDER], axis=-1)
        return {
            "boxes": xp.concatenate(boxes, axis=-2),
            "flip": u[..., _FLIP] < self.flip_prob,
            "color_jitter": u[..., _JITTER] < self.color_jitter_prob,
            "jitter_factors": u[..., _FACTORS] * spans + lows,
            "jitter_order": xp.asarray(order, dtype=xp.int32),
            "grayscale": u[..., _GRAY] < self.grayscale_prob,
            "blur": u[..., _BLUR] < np.array(self._blur_probs(), np.float32),
            "blur_sigma": u[..., _SIGMA] * np.float32(sigma_hi - sigma_lo)
            + np.float32(sigma_lo),
            "solarize": u[..., _SOLARIZE]
            < np.array(self._solarize_probs(), np.float32),
        }

    def sample(self, image_shapes, rng=None):
        """Draws the parameters of all crops of a batch of images.

        Args:
            image_shapes: `(batch, 2)` ints: `(height, width)` of each
                image.
            rng: a `numpy.random.Generator`, or an int seed; `None` uses
                the sampler's own generator (seeded with `seed`).

        Returns:
            Dict of numpy arrays with leading dimensions `(batch,
            num_crops)`, as `params_from_uniforms`.
        """
        shapes = np.asarray(image_shapes, np.int64)
        if shapes.ndim != 2 or shapes.shape[1] != 2 or (shapes < 1).any():
            raise ValueError(
                "`image_shapes` must be `(batch, 2)` positive ints "
                f"(height, width). Received: {image_shapes!r}"
            )
        if rng is None:
            rng = self._rng
        elif not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        u = self.draw_uniforms(len(shapes), rng)
        return self.params_from_uniforms(u, shapes[:, :1], shapes[:, 1:])

    def draw_uniforms(self, count, rng):
        """The uniform draws of `count` images' crops, in image order.

        `sample` turns them into parameters with `params_from_uniforms`;
        image `k`'s draws do not depend on the images' shapes, so a slice
        of one batch's draws gives the same crops as the whole batch.

        Args:
            count: number of images.
            rng: a `numpy.random.Generator`.

        Returns:
            float32 array `(count, num_crops, UNIFORMS_PER_CROP)`.
        """
        return rng.random(
            (count, self.num_crops, UNIFORMS_PER_CROP), np.float32
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
