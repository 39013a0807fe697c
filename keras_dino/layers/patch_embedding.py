"""Patch embedding with CLS token and interpolated position embedding."""

import keras
import numpy as np
from keras import ops

from keras_dino.utils.bicubic import dino_position_grid_matrices


@keras.saving.register_keras_serializable(package="keras_dino")
class PatchEmbedding(keras.layers.Layer):
    """Splits images into patches, embeds them and adds position embeddings.

    A `Conv2D` with kernel and stride `patch_size` projects each patch to
    `hidden_dim`; a learned CLS token is prepended and a learned position
    embedding for a `grid_size x grid_size` patch grid is added. For inputs of
    another size the position embedding is resized exactly as the reference
    DINO does (PyTorch bicubic, a = -0.75, scale factor
    `(h // patch + 0.1) / grid_size`), so imported weights give the
    reference's features at every resolution, square or not.

    Args:
        patch_size: int, side of the square patches in pixels.
        hidden_dim: int, embedding width.
        image_size: int, the training resolution; the position embedding has
            `(image_size // patch_size) ** 2 + 1` entries.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = PatchEmbedding(patch_size=4, hidden_dim=16, image_size=32)
    >>> layer(np.zeros((2, 32, 32, 3))).shape
    (2, 65, 16)
    """

    def __init__(self, patch_size, hidden_dim, image_size, **kwargs):
        super().__init__(**kwargs)
        for name, value in (
            ("patch_size", patch_size),
            ("hidden_dim", hidden_dim),
            ("image_size", image_size),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(
                    f"{name} must be a positive integer, got {value!r}."
                )
        if image_size % patch_size:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of "
                f"patch_size ({patch_size})."
            )
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.image_size = int(image_size)
        self.grid_size = self.image_size // self.patch_size
        # PyTorch's default Conv2d init (kept by the reference): uniform in
        # +-1/sqrt(fan_in) for kernel and bias, fan_in = 3 * patch_size**2.
        bound = (3 * self.patch_size**2) ** -0.5
        self.projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="valid",
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.projection.build(input_shape)
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.cls_token = self.add_weight(
            shape=(1, 1, self.hidden_dim), initializer=init, name="cls_token"
        )
        self.position_embedding = self.add_weight(
            shape=(1, self.grid_size**2 + 1, self.hidden_dim),
            initializer=init,
            name="position_embedding",
        )

    def _check_spatial(self, height, width):
        if height is None or width is None:
            raise ValueError(
                "PatchEmbedding needs static image height and width to "
                "interpolate the position embedding; got an input with "
                f"unknown spatial size ({height}, {width}). Batch images of "
                "one resolution together."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch "
                f"size {self.patch_size}. Resize or crop the images to a "
                "multiple of the patch size."
            )

    def interpolated_position_embedding(self, height, width):
        """Position embedding for a `height x width` input, as in DINO."""
        self._check_spatial(height, width)
        pos = self.position_embedding
        if height == width == self.image_size:
            return pos
        rows, cols = dino_position_grid_matrices(
            self.grid_size, height, width, self.patch_size
        )
        grid = ops.reshape(
            pos[:, 1:], (self.grid_size, self.grid_size, self.hidden_dim)
        )
        rows = ops.convert_to_tensor(rows.astype(np.float32), pos.dtype)
        cols = ops.convert_to_tensor(cols.astype(np.float32), pos.dtype)
        grid = ops.einsum("ij,jkd,lk->ild", rows, grid, cols)
        grid = ops.reshape(grid, (1, -1, self.hidden_dim))
        return ops.concatenate([pos[:, :1], grid], axis=1)

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        self._check_spatial(height, width)
        x = self.projection(images)
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, -1, self.hidden_dim))
        cls = ops.broadcast_to(
            ops.cast(self.cls_token, x.dtype), (batch, 1, self.hidden_dim)
        )
        x = ops.concatenate([cls, x], axis=1)
        pos = self.interpolated_position_embedding(height, width)
        return x + ops.cast(pos, x.dtype)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            tokens = None
        else:
            tokens = (height // self.patch_size) * (
                width // self.patch_size
            ) + 1
        return (input_shape[0], tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "image_size": self.image_size,
            }
        )
        return config
