"""Stochastic depth (per-sample residual branch dropping)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
class DropPath(keras.layers.Layer):
    """Drops the whole residual branch of a sample with probability `rate`.

    Kept samples are scaled by `1 / (1 - rate)`, as in the reference
    `drop_path`. Randomness comes from a layer-owned `SeedGenerator`, so the
    layer traces under JAX and is reproducible with a seed.

    Args:
        rate: float in [0, 1), the drop probability.
        seed: optional int seed.
        **kwargs: standard `keras.layers.Layer` arguments.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(
            shape, dtype=x.dtype, seed=self.seed_generator
        )
        mask = ops.floor(keep + noise)
        return x / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
