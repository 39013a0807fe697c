"""DINOHead against numpy: MLP + exact GELU + L2 norm + weight-norm layer."""

import keras
import numpy as np
import pytest
from scipy.special import erf

from keras_dino.layers import DINOHead


def _gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_head(x, w, num_layers):
    h = x.astype(np.float64)
    for i in range(num_layers):
        h = h @ w[f"dense_{i}/kernel"] + w[f"dense_{i}/bias"]
        if i < num_layers - 1:
            h = _gelu(h)
    h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    v, g = w["last_layer_v"], w["last_layer_g"]
    # weight_norm(dim=0) of the torch (out, in) weight = per output column
    # of the Keras (in, out) kernel.
    kernel = g * v / np.linalg.norm(v, axis=0, keepdims=True)
    return h @ kernel


def _head(num_layers=3, norm_last_layer=True, seed=0, **kwargs):
    head = DINOHead(
        out_dim=64,
        hidden_dim=32,
        bottleneck_dim=16,
        num_layers=num_layers,
        norm_last_layer=norm_last_layer,
        **kwargs,
    )
    head.build((None, 12))
    rng = np.random.default_rng(seed)
    weights = {}
    for v in head.weights:
        if "batch_norm" in v.path:
            continue
        value = rng.normal(size=v.shape).astype("float32") * 0.3
        if v.name == "last_layer_g":
            value = np.abs(value) + 0.5
        v.assign(value)
        weights[v.path.split("/", 1)[1]] = value.astype(np.float64)
    return head, weights


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_matches_numpy(tiny, num_layers):
    head, w = _head(num_layers=num_layers)
    x = np.random.default_rng(1).normal(size=(5, 12)).astype("float32")
    out = tiny.np(head(x))
    assert out.shape == (5, 64)
    np.testing.assert_allclose(out, np_head(x, w, num_layers), atol=2e-5)


def test_gelu_is_exact_not_tanh(tiny):
    # Large pre-activations where the two GELUs differ by > 1e-4.
    head, w = _head(num_layers=2, seed=3)
    x = 5 * np.random.default_rng(2).normal(size=(4, 12)).astype("float32")
    exact = np_head(x, w, 2)
    np.testing.assert_allclose(tiny.np(head(x)), exact, atol=2e-5)


def test_last_layer_variables(tiny):
    head, _ = _head()
    v, g = head.last_layer_variables
    assert v.trainable and not g.trainable
    assert tuple(v.shape) == (16, 64) and tuple(g.shape) == (1, 64)
    head2, _ = _head(norm_last_layer=False)
    assert head2.last_layer_g.trainable
    # g is 2-D (as torch's (out, 1) weight_g): weight-decayed when trained.
    assert len(head2.last_layer_g.shape) == 2
    kernel = tiny.np(head.last_layer_kernel())
    np.testing.assert_allclose(
        np.linalg.norm(kernel, axis=0), tiny.np(g)[0], rtol=1e-5
    )


def test_default_init_gain_is_one(tiny):
    head = DINOHead(out_dim=32, hidden_dim=16, bottleneck_dim=8)
    head.build((None, 4))
    np.testing.assert_array_equal(tiny.np(head.last_layer_g), 1.0)
    # Output rows are cosines: bounded by 1 with unit gain.
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert np.abs(tiny.np(head(x))).max() <= 1.0 + 1e-5


def test_batch_norm_head(tiny):
    head = DINOHead(out_dim=32, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    assert tuple(head(x, training=True).shape) == (6, 32)
    assert len(head.norm_layers) == 2


def test_bad_layers():
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(out_dim=8, num_layers=0)


@pytest.mark.parametrize("use_bn", [False, True])
def test_config_and_saving(tiny, tmp_path, use_bn):
    head = DINOHead(
        out_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        use_bn=use_bn,
        norm_last_layer=False,
        name="head",
    )
    x = np.random.default_rng(4).normal(size=(3, 12)).astype("float32")
    out, cloned, reloaded = tiny.layer_round_trip(head, x, tmp_path)
    np.testing.assert_allclose(cloned, out, atol=1e-6)
    np.testing.assert_allclose(reloaded, out, atol=1e-6)
    assert head.compute_output_shape((3, 12)) == (3, 32)
    assert keras.saving.get_registered_name(DINOHead) == ("keras_dino>DINOHead")
