"""`keras_dino.layers.Dense` against NumPy: values and gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.layers import Dense
from keras_dino.utils.fused_linear import fused_linear


def _gradients(fn, args):
    """Gradients of `fn(*args)` (a scalar) with respect to every arg."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
        return [np.asarray(g) for g in grads]
    if backend == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        fn(*tensors).backward()
        return [t.grad.numpy() for t in tensors]
    import tensorflow as tf

    tensors = [tf.Variable(a) for a in args]
    with tf.GradientTape() as tape:
        out = fn(*tensors)
    return [g.numpy() for g in tape.gradient(out, tensors)]


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6), (2, 1, 3, 6)])
def test_fused_linear_values_and_gradients_match_numpy(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(6, 4)).astype("float32")
    bias = rng.normal(size=(4,)).astype("float32")
    weights = rng.normal(size=shape[:-1] + (4,)).astype("float32")
    expected = x @ kernel + bias
    np.testing.assert_allclose(
        ops.convert_to_numpy(fused_linear(x, kernel, bias)),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )

    def objective(x, kernel, bias):
        return ops.sum(ops.multiply(fused_linear(x, kernel, bias), weights))

    dx, dkernel, dbias = _gradients(objective, [x, kernel, bias])
    rows_x, rows_w = x.reshape(-1, 6), weights.reshape(-1, 4)
    np.testing.assert_allclose(dx, weights @ kernel.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, rows_x.T @ rows_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dbias, rows_w.sum(0), rtol=1e-5, atol=1e-5)


def _pair(**kwargs):
    """A keras_dino Dense and a keras Dense with the same weights."""
    ours = Dense(4, **kwargs)
    theirs = keras.layers.Dense(4, **kwargs)
    ours.build((None, 6))
    theirs.build((None, 6))
    theirs.set_weights(ours.get_weights())
    return ours, theirs


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"activation": "gelu"}, {"use_bias": False}],
    ids=["bias", "activation", "no_bias"],
)
def test_dense_equals_keras_dense(kwargs):
    ours, theirs = _pair(bias_initializer="random_normal", **kwargs)
    x = np.random.default_rng(1).normal(size=(3, 5, 6)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)),
        ops.convert_to_numpy(theirs(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    clone = Dense.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()


def test_mixed_precision_computes_in_bfloat16():
    ours, theirs = _pair(
        bias_initializer="random_normal", dtype="mixed_bfloat16"
    )
    x = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")
    out = ours(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(out, "float32")),
        ops.convert_to_numpy(ops.cast(theirs(x), "float32")),
        rtol=2e-2,
        atol=2e-2,
    )


def test_lora_layer_uses_the_lora_kernel():
    ours, theirs = _pair(bias_initializer="random_normal")
    ours.enable_lora(2)
    theirs.enable_lora(2)
    b = np.random.default_rng(3).normal(size=(2, 4)).astype("float32")
    ours.lora_kernel_b.assign(b)
    theirs.lora_kernel_a.assign(ours.lora_kernel_a)
    theirs.lora_kernel_b.assign(b)
    x = np.random.default_rng(4).normal(size=(3, 6)).astype("float32")
    plain = ops.convert_to_numpy(keras.layers.Dense.call(ours, x))
    assert not np.allclose(
        ops.convert_to_numpy(ours(x)), x @ ours.get_weights()[0]
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)),
        ops.convert_to_numpy(theirs(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), plain, rtol=1e-5)
