"""Image preprocessing: resize and ImageNet normalisation."""

import keras
from keras import ops

# The ImageNet statistics of torchvision's `Normalize`, used by the
# reference for training and evaluation; the one definition in keras_dino.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_dino")
class ImagePreprocessing(keras.layers.Layer):
    """Turns raw images into what a DINO backbone expects.

    Casts to float, optionally resizes to `image_size`, scales pixel values
    by `scale` (`1 / 255`: uint8 `[0, 255]` to `[0, 1]`, as torchvision's
    `ToTensor`), then normalises each channel with `(x - mean) / std`
    (ImageNet statistics by default, as the reference's `Normalize`).
    Channels-last, batched `(batch, height, width, 3)` or single
    `(height, width, 3)` images.

    Resizing uses `keras.ops.image.resize`, whose bicubic kernel is the
    backend's own (PyTorch a = -0.75, TensorFlow and JAX a = -0.5), so
    resized pixels differ slightly across backends and from PIL. Resize
    offline for bit-exact inputs, or pass `image_size=None`.

    Args:
        image_size: `None` (no resize), an int (square) or a
            `(height, width)` tuple.
        interpolation: resize method for `keras.ops.image.resize`.
        crop_to_aspect_ratio: when resizing, first take the largest
            centred crop with the target aspect ratio (no distortion).
        antialias: antialias when downsampling.
        scale: float multiplying the pixel values before normalising.
        mean: per-channel mean subtracted after scaling.
        std: per-channel standard deviation dividing after centring.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = ImagePreprocessing(image_size=224)
    >>> images = np.random.randint(0, 256, (2, 300, 400, 3), "uint8")
    >>> layer(images).shape
    (2, 224, 224, 3)
    """

    def __init__(
        self,
        image_size=None,
        interpolation="bicubic",
        crop_to_aspect_ratio=True,
        antialias=False,
        scale=1.0 / 255.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) < 1:
                raise ValueError(
                    "image_size must be None, a positive int or a "
                    f"(height, width) pair; got {image_size}."
                )
        mean = tuple(float(m) for m in mean)
        std = tuple(float(s) for s in std)
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(
                "mean and std need one value per channel and std must be "
                f"positive; got mean={mean}, std={std}."
            )
        self.image_size = image_size
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.antialias = bool(antialias)
        self.scale = float(scale)
        self.mean = mean
        self.std = std

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.image_size is not None:
            x = ops.image.resize(
                x,
                self.image_size,
                interpolation=self.interpolation,
                antialias=self.antialias,
                crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                data_format="channels_last",
            )
        mean = ops.convert_to_tensor(self.mean, self.compute_dtype)
        std = ops.convert_to_tensor(self.std, self.compute_dtype)
        return (x * self.scale - mean) / std

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.image_size is None:
            return input_shape
        return input_shape[:-3] + self.image_size + input_shape[-1:]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "antialias": self.antialias,
                "scale": self.scale,
                "mean": self.mean,
                "std": self.std,
            }
        )
        return config
