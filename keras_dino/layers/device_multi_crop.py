"""DINO's multi-crop image ops in `keras.ops`, to run on the accelerator."""

import keras
from keras import ops

from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD

# ITU-R 601-2 luma, as PIL's `convert("L")` and torchvision.
GRAYSCALE_WEIGHTS = (0.299, 0.587, 0.114)
# `keras_dino.numpy_data.MultiCropSampler` gives the crop parameters under
# these keys.
PARAM_KEYS = (
    "boxes",
    "flip",
    "color_jitter",
    "jitter_factors",
    "jitter_order",
    "grayscale",
    "blur",
    "blur_sigma",
    "solarize",
)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


def check_crop_arguments(
    global_crop_size, local_crop_size, num_local_crops, mean, std
):
    """Raises a clear `ValueError` for bad multi-crop arguments."""
    for name, value in (
        ("global_crop_size", global_crop_size),
        ("local_crop_size", local_crop_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive int. Received: {name}={value!r}"
            )
    if not isinstance(num_local_crops, int) or num_local_crops < 0:
        raise ValueError(
            "`num_local_crops` must be an int >= 0. Received: "
            f"num_local_crops={num_local_crops!r}"
        )
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(
            "`mean` and `std` must have 3 values (RGB) and `std` must "
            f"be positive. Received: mean={mean!r}, std={std!r}"
        )


def _cubic(x):
    """Keys' cubic kernel with a = -0.5, PIL's BICUBIC filter."""
    a = -0.5
    x = ops.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return ops.where(x < 1.0, near, ops.where(x < 2.0, far, 0.0))


def resize_weights(start, length, size, canvas, antialias=True):
    """Rows of PIL's bicubic resampling of the pixels `[start, start+length)`.

    The weights of PIL's `Image.resize(..., BICUBIC)` of the crop (as
    torchvision's `resized_crop`: crop, then resize the crop alone) along
    one axis, as a dense matrix over the whole padded canvas: output pixel
    `j` has its centre at `start + (j + 0.5) * scale` with `scale =
    length / size`; with antialiasing the kernel is stretched by
    `max(scale, 1)`; weights outside the crop are dropped and each row is
    normalised to sum to 1.

    Args:
        start: float tensor `(...)`, first pixel of the crop.
        length: float tensor `(...)`, crop length in pixels.
        size: int, output length.
        canvas: int, length of the (padded) image axis.
        antialias: stretch the kernel when shrinking, as PIL.

    Returns:
        float32 tensor `(..., size, canvas)`.
    """
    start = ops.cast(start, "float32")[..., None, None]
    length = ops.cast(length, "float32")[..., None, None]
    scale = length / size
    stretch = ops.maximum(scale, 1.0) if antialias else ops.ones_like(scale)
    out = ops.arange(size, dtype="float32")[:, None]
    src = ops.arange(canvas, dtype="float32")[None, :]
    center = start + (out + 0.5) * scale
    weights = _cubic((src + 0.5 - center) / stretch)
    inside = (src >= start) & (src < start + length)
    weights = ops.where(inside, weights, 0.0)
    return weights / ops.sum(weights, axis=-1, keepdims=True)


def _gray(x):
    """Luma of channels-first `(B, K, 3, S, S)` crops, `(B, K, 1, S, S)`."""
    r, g, b = GRAYSCALE_WEIGHTS
    return r * x[:, :, 0:1] + g * x[:, :, 1:2] + b * x[:, :, 2:3]


def _per_crop(values, rank):
    """`(B, K)` values broadcast against `(B, K, ...)` of the given rank."""
    return ops.reshape(values, ops.shape(values) + (1,) * (rank - 2))


def adjust_hue(x, delta):
    """Rotates the hue of `(N, 3, H, W)` images by `delta` (per image).

    As `tf.image.adjust_hue`: RGB to HSV, hue shifted modulo 1, back to RGB,
    clamped to [0, 1].
    """
    hsv = ops.image.rgb_to_hsv(x, data_format="channels_first")
    hue = hsv[:, 0] + delta[:, None, None]
    hue = hue - ops.floor(hue)
    hsv = ops.stack([hue, hsv[:, 1], hsv[:, 2]], axis=1)
    rgb = ops.image.hsv_to_rgb(hsv, data_format="channels_first")
    return ops.clip(rgb, 0.0, 1.0)


def color_jitter(x, factors, order):
    """Brightness, contrast, saturation and hue jitter, in a given order.

    torchvision's `ColorJitter` semantics, as `keras_dino.data.color`:
    brightness scales the pixels, contrast blends with the mean of the
    grayscale image, saturation blends with the grayscale image, hue
    rotates the HSV hue; the result is clamped to [0, 1] after each op.

    Args:
        x: float32 channels-first `(B, K, 3, S, S)` crops in [0, 1].
        factors: float32 `(B, K, 4)`: brightness, contrast and saturation
            factors, hue shift.
        order: int `(B, K, 4)`, each a permutation of `[0, 1, 2, 3]`
            (brightness, contrast, saturation, hue): the order of the ops.

    Returns:
        The jittered crops, same shape.
    """
    # Hue is the costly op: it runs once, between the affine ops before it
    # and those after it (the same sequence as applying the ops in order).
    hue_step = ops.argmax(ops.cast(order == _HUE, "int32"), axis=-1)
    for before_hue, steps in ((True, range(3)), (False, range(1, 4))):
        for step in steps:
            active = hue_step > step if before_hue else hue_step < step
            x = ops.where(
                _per_crop(active, 5), _affine_jitter(x, factors, order, step), x
            )
        if before_hue:
            shape = ops.shape(x)
            hue = adjust_hue(
                ops.reshape(x, (-1,) + tuple(shape[2:])),
                ops.reshape(factors[..., _HUE], (-1,)),
            )
            x = ops.reshape(hue, shape)
    return x


def _affine_jitter(x, factors, order, step):
    """Brightness, contrast or saturation, whichever is op `step` of a crop.

    Each is `clip(a x + b gray(x) + c)`, with per-crop `a`, `b`, `c`.
    """
    op = order[..., step]
    factor = ops.take_along_axis(factors, op[..., None], axis=-1)[..., 0]
    gray = _gray(x)
    mean = ops.mean(gray, axis=(2, 3, 4))
    a = factor
    b = ops.where(op == _SATURATION, 1.0 - factor, 0.0)
    c = ops.where(op == _CONTRAST, (1.0 - factor) * mean, 0.0)
    y = _per_crop(a, 5) * x + _per_crop(b, 5) * gray + _per_crop(c, 5)
    return ops.clip(y, 0.0, 1.0)


def gaussian_blur(x, sigma, kernel_size, block_size=32):
    """Separable Gaussian blur with edge-replicated borders, per crop.

    As `keras_dino.data.gaussian_blur`: a Gaussian of standard deviation
    `sigma` truncated to `kernel_size` taps.

    Along each axis the blur is a banded matrix product, computed block by
    block: the crop, padded by replicating its edges, is cut into
    overlapping windows of `block_size + kernel_size - 1` pixels (static
    slices), and each block of `block_size` outputs is one small matrix
    product with the same band matrix. The blocks do about
    `(block_size + kernel_size - 1) / size` of the multiply-adds of a dense
    `(size, size)` matrix per crop (a fifth for 224 px crops). Measured with
    JAX on a 2-core CPU (the global and local crops of 32 images): 10.7
    CPU-ms an image, against 13.3 for the dense matrices and 10.8 for
    2 x 13 shifted multiply-adds.

    Args:
        x: float32 channels-first `(B, K, C, S, S)` crops.
        sigma: float32 `(B, K)` standard deviations in pixels.
        kernel_size: odd int.
        block_size: outputs per block.

    Returns:
        The blurred crops, same shape.
    """
    radius = kernel_size // 2
    taps = ops.arange(-radius, radius + 1, dtype="float32")
    kernel = ops.exp(-0.5 * ops.square(taps / sigma[..., None]))
    kernel = kernel / ops.sum(kernel, axis=-1, keepdims=True)
    size = x.shape[-1]
    block = min(block_size, size)
    blocks = -(-size // block)
    width = block + 2 * radius
    # band[t, i] = kernel[i - t]: output t of a block from its window.
    one_hot = ops.one_hot(
        ops.arange(block)[:, None] + ops.arange(kernel_size)[None, :],
        width,
        dtype="float32",
    )  # (block, taps, width)
    band = ops.einsum("bkj,tji->bkti", kernel, one_hot)
    # Edge replication; the last block may run past the crop (dropped).
    pad = (radius, radius + blocks * block - size)

    def edge_padded(x, axis):
        # ops.pad's "edge" mode is not available for 5-D tensors on torch.
        size = x.shape[axis]
        first = ops.take(x, [0] * pad[0], axis=axis)
        last = ops.take(x, [size - 1] * pad[1], axis=axis)
        return ops.concatenate([first, x, last], axis=axis)

    def windows(padded, axis):
        def window(i):
            start = i * block
            if axis == -1:
                return padded[..., start : start + width]
            return padded[..., start : start + width, :]

        return ops.stack([window(i) for i in range(blocks)], axis=axis - 1)

    # Along the columns: (B, K, C, S, blocks, width) windows.
    columns = windows(edge_padded(x, -1), -1)
    x = ops.einsum("bkti,bkcsni->bkcsnt", band, columns)
    x = ops.reshape(x, (-1,) + tuple(x.shape[1:4]) + (blocks * block,))[
        ..., :size
    ]
    # Along the rows: (B, K, C, blocks, width, S) windows.
    rows = windows(edge_padded(x, -2), -2)
    x = ops.einsum("bkti,bkcnis->bkcnts", band, rows)
    x = ops.reshape(x, (-1,) + tuple(x.shape[1:3]) + (blocks * block, size))
    return x[..., :size, :]


@keras.saving.register_keras_serializable(package="keras_dino")
class DeviceMultiCropAugmentation(keras.layers.Layer):
    """DINO's multi-crop image ops in `keras.ops`, on the accelerator.

    The device half of the multi-crop augmentation: the host decodes the
    images and samples every random parameter with
    `keras_dino.numpy_data.MultiCropSampler` (the distributions of the
    `tf.data` `MultiCropAugmentation`); this layer computes the crops in
    `keras.ops`, so they run inside the jitted training step on every
    backend:

    1. the random resized crop, resized with PIL's antialiased bicubic
       filter (the reference runs torchvision on PIL images), as two
       matrix products per crop over the padded image;
    2. the horizontal flip (folded into the resize matrix);
    3. colour jitter (brightness, contrast, saturation, hue in the sampled
       order, clamped after each op);
    4. grayscale (ITU-R 601-2 luma);
    5. Gaussian blur with the sampled sigma;
    6. solarisation (pixels >= 128/255 inverted);
    7. normalisation with `mean` and `std`.

    Every op is computed for every crop and selected with its sampled flag
    (no data-dependent control flow, so XLA and `torch.compile` see static
    shapes). Core Keras preprocessing layers are not used: their
    parameters do not follow the reference's distributions
    (`RandomColorJitter` has a fixed op order and other contrast and
    saturation definitions, `RandomGaussianBlur` draws one sigma per
    batch and axis, `RandomGrayscale` weighs green 0.2989, `Solarization`
    has no probability and inverts above, not at, the threshold), and
    `keras.ops.image.resize` has no per-image crop box.

    Args:
        global_crop_size: side of the global crops in pixels.
        local_crop_size: side of the local crops in pixels.
        num_local_crops: number of local crops.
        blur_kernel_size: odd length of the Gaussian kernel,
            `2 * ceil(3 * max_sigma) + 1` (13 for DINO's sigma up to 2).
        mean: per-channel mean subtracted from the [0, 1] pixels.
        std: per-channel standard deviation the pixels are divided by.
        antialias: stretch the bicubic kernel when shrinking, as PIL.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: dict with `images`, uint8 `(batch, height, width, 3)`
            (images smaller than the canvas padded at the bottom and
            right; the padding is never read) or float in [0, 1], and
            the sampled parameters of each crop, with leading dimensions
            `(batch, num_crops)`: `boxes`, `flip`, `color_jitter`,
            `jitter_factors`, `jitter_order`, `grayscale`, `blur`,
            `blur_sigma`, `solarize` (see
            `MultiCropSampler.params_from_uniforms`).

    Returns:
        Tuple of `2 + num_local_crops` float tensors: two global crops
        `(batch, global_crop_size, global_crop_size, 3)`, then the local
        crops `(batch, local_crop_size, local_crop_size, 3)`.

    Example:

    ```python
    sampler = keras_dino.numpy_data.MultiCropSampler(seed=0)
    augment = DeviceMultiCropAugmentation.from_sampler(sampler)
    batch = {"images": images, **sampler.sample([(224, 224)] * len(images))}
    crops = augment(batch)  # 2 global + 8 local crop batches
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
        blur_kernel_size=13,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        antialias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_crop_arguments(
            global_crop_size, local_crop_size, num_local_crops, mean, std
        )
        if not isinstance(blur_kernel_size, int) or blur_kernel_size % 2 != 1:
            raise ValueError(
                "`blur_kernel_size` must be an odd positive int. Received: "
                f"blur_kernel_size={blur_kernel_size!r}"
            )
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size
        self.num_local_crops = num_local_crops
        self.blur_kernel_size = blur_kernel_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.antialias = bool(antialias)

    @classmethod
    def from_sampler(cls, sampler, **kwargs):
        """The layer that computes the crops `sampler` parameterises.

        Args:
            sampler: a `keras_dino.numpy_data.MultiCropSampler` (or a
                `keras_dino.data.MultiCropAugmentation`).
            **kwargs: layer arguments overriding the sampler's (`mean`,
                `std`) and standard ones (`name`, `dtype`).
        """
        config = dict(
            global_crop_size=sampler.global_crop_size,
            local_crop_size=sampler.local_crop_size,
            num_local_crops=sampler.num_local_crops,
            blur_kernel_size=sampler.blur_kernel_size,
            mean=sampler.mean,
            std=sampler.std,
            antialias=sampler.antialias,
        )
        return cls(**{**config, **kwargs})

    @property
    def num_crops(self):
        """Total number of crops per image: 2 + `num_local_crops`."""
        return 2 + self.num_local_crops

    def build(self, input_shape=None):
        self.built = True

    def _check_inputs(self, inputs):
        if not isinstance(inputs, dict) or "images" not in inputs:
            raise ValueError(
                "DeviceMultiCropAugmentation expects a dict with `images` "
                f"and the crop parameters {PARAM_KEYS}, as given by "
                "keras_dino.numpy_data readers and MultiCropSampler.sample. "
                f"Received: {type(inputs).__name__}"
            )
        missing = [k for k in PARAM_KEYS if k not in inputs]
        if missing:
            raise ValueError(
                f"DeviceMultiCropAugmentation is missing the crop parameters "
                f"{missing}; give the dict of MultiCropSampler.sample."
            )
        images = inputs["images"]
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(
                "`images` must be (batch, height, width, 3). Received shape "
                f"{tuple(images.shape)}."
            )
        num_crops = inputs["boxes"].shape[1]
        if num_crops is not None and num_crops != self.num_crops:
            raise ValueError(
                f"The parameters are for {num_crops} crops per image but the "
                f"layer makes {self.num_crops} (2 global + "
                f"{self.num_local_crops} local)."
            )

    def _crops(self, images, params, first, last, size):
        """Crops `first:last` of each image, `(B, last - first, S, S, 3)`."""
        p = {k: v[:, first:last] for k, v in params.items()}
        boxes = ops.cast(p["boxes"], "float32")
        height, width = images.shape[1], images.shape[2]
        rows = resize_weights(
            boxes[..., 0], boxes[..., 2], size, height, self.antialias
        )
        cols = resize_weights(
            boxes[..., 1], boxes[..., 3], size, width, self.antialias
        )
        flip = _per_crop(ops.cast(p["flip"], "bool"), 4)
        cols = ops.where(flip, ops.flip(cols, axis=-2), cols)
        # Rows first, as one matrix product per image over all its crops
        # ((k s, h) by (h, w c)); then channels first: the innermost axis
        # is a long image axis, not the 3 channels (about 4x faster
        # element-wise ops on a CPU), and the columns.
        k = last - first
        x = ops.matmul(
            ops.reshape(rows, (-1, k * size, height)),
            ops.reshape(images, (-1, height, width * 3)),
        )
        x = ops.transpose(
            ops.reshape(x, (-1, k, size, width, 3)), (0, 1, 4, 2, 3)
        )
        x = ops.matmul(x, ops.expand_dims(ops.swapaxes(cols, -1, -2), 2))
        x = ops.clip(x, 0.0, 1.0)

        jittered = color_jitter(
            x,
            ops.cast(p["jitter_factors"], "float32"),
            ops.cast(p["jitter_order"], "int32"),
        )
        x = ops.where(_flag(p["color_jitter"]), jittered, x)
        gray = ops.repeat(_gray(x), 3, axis=2)
        x = ops.where(_flag(p["grayscale"]), gray, x)
        blurred = gaussian_blur(
            x, ops.cast(p["blur_sigma"], "float32"), self.blur_kernel_size
        )
        x = ops.where(_flag(p["blur"]), blurred, x)
        invert = _flag(p["solarize"]) & (x >= 128.0 / 255.0)
        x = ops.where(invert, 1.0 - x, x)
        x = ops.transpose(x, (0, 1, 3, 4, 2))
        inv_std = ops.convert_to_tensor([1.0 / s for s in self.std])
        offset = ops.convert_to_tensor(
            [-m / s for m, s in zip(self.mean, self.std)]
        )
        x = x * inv_std + offset
        return ops.cast(x, self.compute_dtype)

    def call(self, inputs):
        self._check_inputs(inputs)
        images = inputs["images"]
        if "int" in keras.backend.standardize_dtype(images.dtype):
            images = ops.cast(images, "float32") / 255.0
        images = ops.cast(images, "float32")
        params = {k: inputs[k] for k in PARAM_KEYS}
        crops = self._crops(images, params, 0, 2, self.global_crop_size)
        out = [crops[:, 0], crops[:, 1]]
        if self.num_local_crops:
            local = self._crops(
                images, params, 2, self.num_crops, self.local_crop_size
            )
            out.extend(local[:, k] for k in range(self.num_local_crops))
        return tuple(out)

    def compute_output_shape(self, input_shape):
        batch = input_shape["images"][0]
        return tuple(
            (batch, s, s, 3)
            for s in (self.global_crop_size,) * 2
            + (self.local_crop_size,) * self.num_local_crops
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "global_crop_size": self.global_crop_size,
                "local_crop_size": self.local_crop_size,
                "num_local_crops": self.num_local_crops,
                "blur_kernel_size": self.blur_kernel_size,
                "mean": self.mean,
                "std": self.std,
                "antialias": self.antialias,
            }
        )
        return config


def _flag(values):
    """`(B, K)` booleans broadcast against `(B, K, 3, S, S)` crops."""
    return _per_crop(ops.cast(values, "bool"), 5)
