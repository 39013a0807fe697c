"""`inputs @ kernel + bias` as one matrix product on the PyTorch backend.

Keras's `Dense` multiplies, then adds the bias in a second pass over the
output (and its gradient). PyTorch's `addmm` starts the product from the
broadcast bias, which is what the reference's `nn.Linear` does: one pass
fewer over every activation of every linear layer, forward and backward.
Other backends keep `matmul` + `add`, which XLA and TensorFlow's graph
optimiser fuse on their own.
"""

import keras
from keras import ops


def fused_linear(inputs, kernel, bias):
    """Returns `inputs @ kernel + bias`.

    Args:
        inputs: `(..., in_dim)` tensor.
        kernel: `(in_dim, out_dim)` tensor or `keras.Variable` (read with
            the current autocast, like `Dense`'s own kernel).
        bias: `(out_dim,)` tensor or `keras.Variable`.
    """
    if keras.backend.backend() != "torch":
        return ops.add(ops.matmul(inputs, kernel), bias)
    import torch

    kernel = ops.convert_to_tensor(kernel)
    bias = ops.convert_to_tensor(bias)
    inputs = ops.convert_to_tensor(inputs)
    if inputs.ndim == 2:
        return torch.addmm(bias, inputs, kernel)
    flat = inputs.reshape(-1, inputs.shape[-1])
    out = torch.addmm(bias, flat, kernel)
    return out.reshape(*inputs.shape[:-1], kernel.shape[-1])
