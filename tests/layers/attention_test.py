"""MultiHeadSelfAttention against a numpy attention."""

import keras
import numpy as np
import pytest

from keras_dino.layers import MultiHeadSelfAttention


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(x, wqkv, bqkv, wproj, bproj, heads):
    b, n, c = x.shape
    hd = c // heads
    qkv = (x @ wqkv + bqkv).reshape(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    scores = _softmax(q @ k.transpose(0, 1, 3, 2) * hd**-0.5)
    out = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    return out @ wproj + bproj, scores


def _inputs(shape=(2, 5, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _randomise(layer, tiny, seed=1):
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.3)
    return [tiny.np(v) for v in layer.weights]


def test_matches_numpy_and_scores_sum_to_one(tiny):
    x = _inputs()
    layer = MultiHeadSelfAttention(8, 2)
    layer.build(x.shape)
    wqkv, bqkv, wproj, bproj = _randomise(layer, tiny)
    expected, expected_scores = np_attention(x, wqkv, bqkv, wproj, bproj, 2)
    out, scores = layer(x, return_attention_scores=True)
    np.testing.assert_allclose(tiny.np(out), expected, atol=1e-5)
    np.testing.assert_allclose(tiny.np(scores), expected_scores, atol=1e-6)
    assert tuple(scores.shape) == (2, 2, 5, 5)
    np.testing.assert_allclose(tiny.np(scores).sum(-1), 1.0, atol=1e-6)
    # The fused dot_product_attention path gives the same output.
    np.testing.assert_allclose(tiny.np(layer(x)), expected, atol=1e-5)


def test_no_qkv_bias(tiny):
    x = _inputs(seed=2)
    layer = MultiHeadSelfAttention(8, 4, qkv_bias=False)
    layer.build(x.shape)
    assert len(layer.weights) == 3
    wqkv, wproj, bproj = _randomise(layer, tiny)
    expected, _ = np_attention(x, wqkv, 0.0, wproj, bproj, 4)
    np.testing.assert_allclose(tiny.np(layer(x)), expected, atol=1e-5)


def test_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(10, 3)


def test_config_round_trip(tiny):
    layer = MultiHeadSelfAttention(8, 2, name="attn")
    x = _inputs()
    out, cloned = tiny.config_round_trip(layer, x)
    np.testing.assert_allclose(cloned, out, atol=1e-6)
    assert layer.compute_output_shape((2, 5, 8)) == (2, 5, 8)


def test_keras_saving(tiny, tmp_path):
    layer = MultiHeadSelfAttention(8, 2, name="attn")
    x = _inputs()
    out, reloaded = tiny.keras_round_trip(layer, x, tmp_path)
    np.testing.assert_allclose(reloaded, out, atol=1e-6)


def test_mixed_bfloat16_close_to_numpy(tiny):
    """bfloat16 compute (explicit matmuls on a torch CPU) stays close."""
    x = _inputs(shape=(2, 9, 16))
    layer = MultiHeadSelfAttention(16, 4, dtype="mixed_bfloat16")
    layer.build(x.shape)
    weights = _randomise(layer, tiny)
    assert all(v.dtype == "float32" for v in layer.weights)
    expected, _ = np_attention(x, *weights, 4)
    out = layer(x)
    assert "bfloat16" in str(out.dtype)
    err = np.abs(tiny.np(keras.ops.cast(out, "float32")) - expected)
    # bfloat16 keeps 8 significant bits: relative error ~ 2**-8 per op.
    assert err.max() < 0.05 * np.abs(expected).max()
    assert err.max() > 0.0  # it really computed in bfloat16
