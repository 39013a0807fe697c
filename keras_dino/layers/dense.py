"""`keras.layers.Dense` with the bias added inside the matrix product."""

import keras

from keras_dino.utils.fused_linear import fused_linear


@keras.saving.register_keras_serializable(package="keras_dino")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` that adds its bias inside the product.

    The same layer, weights and results as `keras.layers.Dense`. The
    product runs on the input flattened to 2-D, and on the PyTorch backend
    the product and the bias are one `addmm`, as in the reference's
    `nn.Linear` (see `keras_dino.utils.fused_linear`). A
    quantized or LoRA-enabled layer, or one without a bias, runs
    `keras.layers.Dense.call` unchanged.

    Args:
        Those of `keras.layers.Dense`.
    """

    def call(self, inputs, training=None):
        if (
            self.bias is None
            or self.quantization_mode is not None
            or self.lora_enabled
        ):
            return super().call(inputs, training=training)
        x = fused_linear(inputs, self._kernel, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
