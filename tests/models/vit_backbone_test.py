"""ViTBackbone: shapes, parameter counts, attention/intermediate outputs."""

import keras
import numpy as np
import pytest

from keras_dino.models import VARIANTS
from keras_dino.models import ViTBackbone


def vit_params(image_size, patch_size, hidden_dim, num_layers, mlp_ratio=4):
    """Parameter count of the reference ViT, from its layer shapes."""
    d, h = hidden_dim, int(hidden_dim * mlp_ratio)
    tokens = (image_size // patch_size) ** 2 + 1
    embed = 3 * patch_size**2 * d + d + d + tokens * d
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h)
    block += h * d + d
    return embed + num_layers * block + 2 * d


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_output_shapes(tiny):
    backbone = tiny.backbone()
    for shape in [(2, 32, 32, 3), (3, 16, 16, 3), (1, 32, 48, 3)]:
        out = backbone(_images(shape))
        assert tuple(out.shape) == (shape[0], 16)


def test_param_count_formula_and_variants(tiny):
    for config in [
        {"num_layers": 1},
        {"num_layers": 2, "mlp_ratio": 4.0},
        {"patch_size": 4, "hidden_dim": 24, "num_heads": 3},
    ]:
        backbone = tiny.backbone(**config)
        c = tiny.backbone_config(**config)
        expected = vit_params(
            c["image_size"],
            c["patch_size"],
            c["hidden_dim"],
            c["num_layers"],
            c["mlp_ratio"],
        )
        assert backbone.count_params() == expected
    # The paper's ViT-S/16: 21.7M parameters; ViT-B/16: 85.8M.
    small = VARIANTS["ViT-S/16"]
    count = vit_params(224, small["patch_size"], small["hidden_dim"], 12)
    assert round(count / 1e6, 1) == 21.7
    base = VARIANTS["ViT-B/16"]
    assert round(vit_params(224, 16, base["hidden_dim"], 12) / 1e6, 1) == 85.8
    assert VARIANTS["ViT-S/8"]["patch_size"] == 8
    assert VARIANTS["ViT-T/16"]["hidden_dim"] == 192


def test_from_variant(tiny):
    backbone = ViTBackbone.from_variant(
        "T/16", image_size=32, num_layers=1, hidden_dim=12
    )
    assert backbone.patch_size == 16 and backbone.num_heads == 3
    assert backbone.hidden_dim == 12
    assert tuple(backbone(_images((1, 32, 32, 3))).shape) == (1, 12)
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        ViTBackbone.from_variant("ViT-Q/3")


def test_drop_path_rates_grow_linearly(tiny):
    backbone = tiny.backbone(num_layers=3, drop_path_rate=0.1)
    rates = [block.drop_path_rate for block in backbone.blocks]
    np.testing.assert_allclose(rates, [0.0, 0.05, 0.1])


def _manual_tokens(backbone, images):
    x = backbone.patch_embedding(images)
    outs = []
    for block in backbone.blocks:
        x = block(x)
        outs.append(x)
    return outs


def test_last_self_attention_and_intermediate_layers(tiny):
    backbone = tiny.backbone(num_layers=2)
    for shape in [(2, 32, 32, 3), (2, 16, 24, 3)]:
        images = _images(shape, seed=1)
        tokens = (shape[1] // 8) * (shape[2] // 8) + 1
        attention = backbone.get_last_self_attention(images)
        assert tuple(attention.shape) == (2, 2, tokens, tokens)
        attention = tiny.np(attention)
        np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
        outs = _manual_tokens(backbone, images)
        x = backbone.patch_embedding(images)
        x = backbone.blocks[0](x)
        _, expected = backbone.blocks[1](x, return_attention_scores=True)
        np.testing.assert_allclose(attention, tiny.np(expected), atol=1e-6)

        layers = backbone.get_intermediate_layers(images, n=2)
        assert len(layers) == 2
        for got, raw in zip(layers, outs):
            assert tuple(got.shape) == (2, tokens, 16)
            np.testing.assert_allclose(
                tiny.np(got), tiny.np(backbone.final_norm(raw)), atol=1e-5
            )
        # The CLS token of the last layer is the backbone's output.
        np.testing.assert_allclose(
            tiny.np(layers[-1])[:, 0], tiny.np(backbone(images)), atol=1e-5
        )
        last = backbone.get_intermediate_layers(images)
        assert len(last) == 1
    with pytest.raises(ValueError, match="n must be"):
        backbone.get_intermediate_layers(images, n=3)


def test_bad_image_size(tiny):
    backbone = tiny.backbone()
    with pytest.raises(ValueError, match="multiple of the patch"):
        backbone(_images((1, 30, 32, 3)))
    with pytest.raises(ValueError, match="multiple"):
        tiny.backbone(image_size=36)


def test_config_round_trip(tiny):
    backbone = tiny.backbone(drop_path_rate=0.1, seed=3, name="vit")
    config = backbone.get_config()
    clone = ViTBackbone.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(backbone.get_weights())
    images = _images((2, 32, 32, 3))
    np.testing.assert_allclose(
        tiny.np(clone(images)), tiny.np(backbone(images)), atol=1e-6
    )


def test_keras_saving(tiny, tmp_path):
    backbone = tiny.backbone(drop_path_rate=0.1, seed=3)
    images = _images((2, 16, 24, 3))
    expected = tiny.np(backbone(images))
    reloaded = tiny.save_and_reload(backbone, tmp_path)
    assert isinstance(reloaded, ViTBackbone)
    assert reloaded.get_config() == backbone.get_config()
    np.testing.assert_allclose(tiny.np(reloaded(images)), expected, atol=1e-6)
    attention = reloaded.get_last_self_attention(images)
    np.testing.assert_allclose(
        tiny.np(attention),
        tiny.np(backbone.get_last_self_attention(images)),
        atol=1e-6,
    )
    assert keras.saving.get_registered_name(ViTBackbone) == (
        "keras_dino>ViTBackbone"
    )
