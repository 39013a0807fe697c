"""The ResNet backbone of DINO's convnet runs, laid out like torchvision's."""

import types

import keras
import numpy as np

# Bottleneck blocks per stage of torchvision's bottleneck ResNets.
RESNET_VARIANTS = {
    "resnet50": {"block_counts": (3, 4, 6, 3)},
    "resnet101": {"block_counts": (3, 4, 23, 3)},
    "resnet152": {"block_counts": (3, 8, 36, 3)},
}

# The official DINO ResNet weights (files: `keras_dino.weights`).
RESNET_PRESETS = types.MappingProxyType(
    {
        "dino_resnet50": {
            "variant": "resnet50",
            "description": "DINO ResNet-50, 23M parameters, ImageNet k-NN "
            "67.5%, linear 75.3%.",
        },
    }
)

_EXPANSION = 4
_CHANNELS_LAST = "channels_last"


@keras.saving.register_keras_serializable(package="keras_dino")
class KaimingNormalFanOut(keras.initializers.Initializer):
    """torchvision's ResNet convolution init, drawn on the host.

    `normal(0, sqrt(2 / (kh * kw * out)))`, i.e. PyTorch's
    `kaiming_normal_(mode="fan_out", nonlinearity="relu")`. The values come
    from NumPy's global generator (seeded by `keras.utils.set_random_seed`):
    with JAX, drawing them with `keras.random` compiles one XLA program per
    kernel shape, which made building a ResNet-50 about 30x slower.
    """

    def __call__(self, shape, dtype=None):
        kh, kw, _, out = shape
        std = (2.0 / (kh * kw * out)) ** 0.5
        value = np.random.standard_normal(shape) * std
        return keras.ops.convert_to_tensor(value.astype("float32"), dtype=dtype)


def _conv(filters, kernel_size, strides, dtype, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        data_format=_CHANNELS_LAST,
        kernel_initializer=KaimingNormalFanOut(),
        dtype=dtype,
        name=name,
    )


def _pad(padding, dtype, name):
    return keras.layers.ZeroPadding2D(
        padding, data_format=_CHANNELS_LAST, dtype=dtype, name=name
    )


@keras.saving.register_keras_serializable(package="keras_dino")
class ResNetBackbone(keras.Model):
    """Bottleneck ResNet (v1.5) as DINO trains it; outputs pooled features.

    The layout is torchvision's `resnet50` (`resnet101`, `resnet152`): a
    7x7/2 convolution, BatchNorm, ReLU and a 3x3/2 max pool (padding 1),
    then four stages of bottleneck blocks (1x1, 3x3, 1x1 convolutions, the
    stride on the 3x3 one, a 1x1 convolution + BatchNorm shortcut where the
    shape changes), and a global average pool. The classifier is left out,
    as DINO replaces it with `nn.Identity`. All padding is explicit and
    symmetric, as in PyTorch, so imported torchvision weights give the same
    features at every resolution. BatchNorm uses PyTorch's defaults
    (epsilon 1e-5, momentum 0.1, which is Keras momentum 0.9).

    Channels-last images of any size go in; `(batch, 8 * width *
    4)` features come out (2048 for the standard width 64).

    Args:
        block_counts: sequence of 4 ints, bottleneck blocks per stage
            (ResNet-50: `(3, 4, 6, 3)`).
        width: int, channels of the stem; stage `i` has `width * 2**i`
            bottleneck channels and `4 * width * 2**i` outputs.
        batch_norm_momentum: float, Keras momentum of the moving
            statistics (1 - PyTorch's momentum).
        batch_norm_epsilon: float.
        dtype: optional dtype policy.
        **kwargs: standard `keras.Model` arguments (e.g. `name`).

    Example:
    >>> backbone = ResNetBackbone.from_variant("resnet50")
    >>> backbone(np.zeros((1, 224, 224, 3), "float32")).shape
    (1, 2048)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR
        2016; torchvision's `resnet.py` (stride in the 3x3 convolution).
    """

    # Name -> {"variant", "description"} of the official DINO weights.
    presets = RESNET_PRESETS

    def __init__(
        self,
        block_counts=(3, 4, 6, 3),
        width=64,
        batch_norm_momentum=0.9,
        batch_norm_epsilon=1e-5,
        dtype=None,
        **kwargs,
    ):
        block_counts = tuple(int(n) for n in block_counts)
        if len(block_counts) != 4 or min(block_counts) < 1:
            raise ValueError(
                "block_counts must be 4 positive ints (blocks per stage), "
                f"got {block_counts}."
            )
        width = int(width)
        if width < 1:
            raise ValueError(f"width must be positive, got {width}.")

        def batch_norm(name):
            return keras.layers.BatchNormalization(
                axis=-1,
                momentum=batch_norm_momentum,
                epsilon=batch_norm_epsilon,
                dtype=dtype,
                name=name,
            )

        # === Layers ===
        stem = {
            "pad": _pad(3, dtype, "conv1_pad"),
            "conv": _conv(width, 7, 2, dtype, "conv1"),
            "bn": batch_norm("bn1"),
            "pool_pad": _pad(1, dtype, "maxpool_pad"),
            "pool": keras.layers.MaxPooling2D(
                3, 2, data_format=_CHANNELS_LAST, dtype=dtype, name="maxpool"
            ),
        }
        stages = []
        in_channels = width
        for s, count in enumerate(block_counts):
            planes = width * 2**s
            blocks = []
            for b in range(count):
                stride = 2 if (s > 0 and b == 0) else 1
                name = f"layer{s + 1}_{b}"
                block = {
                    "conv1": _conv(planes, 1, 1, dtype, f"{name}_conv1"),
                    "bn1": batch_norm(f"{name}_bn1"),
                    "pad2": _pad(1, dtype, f"{name}_conv2_pad"),
                    "conv2": _conv(planes, 3, stride, dtype, f"{name}_conv2"),
                    "bn2": batch_norm(f"{name}_bn2"),
                    "conv3": _conv(
                        planes * _EXPANSION, 1, 1, dtype, f"{name}_conv3"
                    ),
                    "bn3": batch_norm(f"{name}_bn3"),
                    "add": keras.layers.Add(dtype=dtype, name=f"{name}_add"),
                }
                if stride != 1 or in_channels != planes * _EXPANSION:
                    block["downsample_conv"] = _conv(
                        planes * _EXPANSION,
                        1,
                        stride,
                        dtype,
                        f"{name}_downsample_0",
                    )
                    block["downsample_bn"] = batch_norm(f"{name}_downsample_1")
                blocks.append(block)
                in_channels = planes * _EXPANSION
            stages.append(blocks)
        pool = keras.layers.GlobalAveragePooling2D(
            data_format=_CHANNELS_LAST, dtype=dtype, name="avgpool"
        )

        # === Functional model ===
        # Set `trainable` once the layers exist: passed to Functional's
        # constructor it would not reach them.
        trainable = kwargs.pop("trainable", True)
        relu = keras.activations.relu
        images = keras.Input(shape=(None, None, 3), name="images")
        x = stem["conv"](stem["pad"](images))
        x = relu(stem["bn"](x))
        # Zero padding equals PyTorch's -inf padding here: after the ReLU
        # every window holds at least one value >= 0.
        x = stem["pool"](stem["pool_pad"](x))
        for blocks in stages:
            for block in blocks:
                y = relu(block["bn1"](block["conv1"](x)))
                y = relu(block["bn2"](block["conv2"](block["pad2"](y))))
                y = block["bn3"](block["conv3"](y))
                if "downsample_conv" in block:
                    x = block["downsample_bn"](block["downsample_conv"](x))
                x = relu(block["add"]([x, y]))
        features = pool(x)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.block_counts = block_counts
        self.width = width
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.stem = stem
        self.stages = stages
        self.trainable = trainable

    @property
    def output_dim(self):
        """Width of the pooled features (2048 for ResNet-50)."""
        return self.width * 2 ** (len(self.block_counts) - 1) * _EXPANSION

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """Builds `"resnet50"`, `"resnet101"` or `"resnet152"`.

        Keyword arguments override the variant's settings (e.g. `dtype`,
        `name`).
        """
        if variant not in RESNET_VARIANTS:
            raise ValueError(
                f"Unknown ResNet variant {variant!r}. Choose one of "
                f"{sorted(RESNET_VARIANTS)}."
            )
        return cls(**{**RESNET_VARIANTS[variant], **kwargs})

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Builds a backbone with pretrained DINO ResNet weights.

        Args:
            preset: `"dino_resnet50"` (downloaded once into the Keras
                cache), or a local `.pth` file (torchvision names, a
                backbone state dict or a full DINO training checkpoint),
                or a `file://` / `https://` URL. No pickled code runs.
            load_weights: when false, build the architecture only.
            **kwargs: `checkpoint_key` ("teacher" or "student"),
                `file_hash`, `cache_dir`, or `ResNetBackbone` arguments
                (e.g. `dtype`, `name`).

        Returns:
            A `ResNetBackbone`, built by the loader that
            `keras_dino.weights` registers.

        Example:
        >>> backbone = ResNetBackbone.from_preset("dino_resnet50")
        """
        from keras_dino.models.presets import get_preset_loader

        loader = get_preset_loader("resnet_backbone")
        return loader(preset, load_weights=load_weights, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "block_counts": list(self.block_counts),
            "width": self.width,
            "batch_norm_momentum": self.batch_norm_momentum,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            # The layers hold the policy: Functional does not keep `dtype`.
            "dtype": keras.dtype_policies.serialize(
                self.stem["conv"].dtype_policy
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
