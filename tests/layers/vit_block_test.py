"""ViTBlock against a numpy pre-norm transformer block."""

import numpy as np
from scipy.special import erf

from keras_dino.layers import ViTBlock


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_block(x, w, heads):
    b, n, c = x.shape
    hd = c // heads
    h = _layer_norm(x, w["norm1/gamma"], w["norm1/beta"])
    qkv = h @ w["attention/qkv/kernel"] + w["attention/qkv/bias"]
    qkv = qkv.reshape(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    scores = _softmax(q @ k.transpose(0, 1, 3, 2) * hd**-0.5)
    a = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    x = x + a @ w["attention/proj/kernel"] + w["attention/proj/bias"]
    h = _layer_norm(x, w["norm2/gamma"], w["norm2/beta"])
    h = _gelu(h @ w["mlp_fc1/kernel"] + w["mlp_fc1/bias"])
    return x + h @ w["mlp_fc2/kernel"] + w["mlp_fc2/bias"], scores


def _block(tiny, drop_path_rate=0.0, seed=0):
    layer = ViTBlock(8, 2, 16, drop_path_rate=drop_path_rate, seed=seed)
    layer.build((None, 5, 8))
    rng = np.random.default_rng(seed)
    weights = {}
    for v in layer.weights:
        value = rng.normal(size=v.shape).astype("float32") * 0.3
        if v.name == "gamma":
            value += 1.0
        v.assign(value)
        weights[v.path.split("/", 1)[1]] = value.astype(np.float64)
    return layer, weights


def test_matches_numpy(tiny):
    layer, w = _block(tiny)
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")
    expected, expected_scores = np_block(x.astype(np.float64), w, 2)
    np.testing.assert_allclose(tiny.np(layer(x)), expected, atol=1e-4)
    out, scores = layer(x, return_attention_scores=True)
    np.testing.assert_allclose(tiny.np(out), expected, atol=1e-4)
    np.testing.assert_allclose(tiny.np(scores), expected_scores, atol=1e-5)


def test_drop_path_only_in_training(tiny):
    layer, w = _block(tiny, drop_path_rate=0.5, seed=3)
    x = np.random.default_rng(2).normal(size=(16, 5, 8)).astype("float32")
    expected, _ = np_block(x.astype(np.float64), w, 2)
    np.testing.assert_allclose(
        tiny.np(layer(x, training=False)), expected, atol=1e-4
    )
    trained = tiny.np(layer(x, training=True))
    assert not np.allclose(trained, expected, atol=1e-3)


def test_config_round_trip(tiny):
    layer = ViTBlock(8, 2, 16, drop_path_rate=0.1, seed=4, name="blk")
    x = np.random.default_rng(5).normal(size=(2, 5, 8)).astype("float32")
    out, cloned = tiny.config_round_trip(layer, x)
    np.testing.assert_allclose(cloned, out, atol=1e-6)
    assert layer.compute_output_shape((2, 5, 8)) == (2, 5, 8)


def test_keras_saving(tiny, tmp_path):
    layer = ViTBlock(8, 2, 16, drop_path_rate=0.1, seed=4, name="blk")
    x = np.random.default_rng(5).normal(size=(2, 5, 8)).astype("float32")
    out, reloaded = tiny.keras_round_trip(layer, x, tmp_path)
    np.testing.assert_allclose(reloaded, out, atol=1e-6)
