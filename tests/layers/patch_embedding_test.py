"""PatchEmbedding: patches, CLS token and the reference's bicubic resize."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_dino.layers import PatchEmbedding
from keras_dino.utils.bicubic import bicubic_resize_matrix


def _torch_interpolated(pos, grid, height, width, patch):
    """The reference `interpolate_pos_encoding`, with torch."""
    dim = pos.shape[-1]
    patch_pos = torch.tensor(pos[:, 1:]).reshape(1, grid, grid, dim)
    patch_pos = F.interpolate(
        patch_pos.permute(0, 3, 1, 2),
        scale_factor=(
            (height // patch + 0.1) / grid,
            (width // patch + 0.1) / grid,
        ),
        mode="bicubic",
        align_corners=False,
    )
    assert patch_pos.shape[-2:] == (height // patch, width // patch)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy()
    return np.concatenate([pos[:, :1], patch_pos], axis=1)


def _layer(patch=16, dim=8, image_size=224, seed=0):
    layer = PatchEmbedding(patch, dim, image_size)
    layer.build((None, image_size, image_size, 3))
    rng = np.random.default_rng(seed)
    layer.position_embedding.assign(
        rng.normal(size=layer.position_embedding.shape).astype("float32")
    )
    return layer


@pytest.mark.parametrize(
    "height,width",
    [(96, 96), (160, 96), (64, 224), (240, 320), (32, 48)],
)
def test_interpolation_equals_torch_bicubic(tiny, height, width):
    layer = _layer()
    pos = tiny.np(layer.position_embedding)
    expected = _torch_interpolated(pos, 14, height, width, 16)
    got = tiny.np(layer.interpolated_position_embedding(height, width))
    assert got.shape == (1, (height // 16) * (width // 16) + 1, 8)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_training_size_uses_embedding_as_is(tiny):
    layer = _layer(patch=8, dim=4, image_size=32)
    got = tiny.np(layer.interpolated_position_embedding(32, 32))
    np.testing.assert_array_equal(got, tiny.np(layer.position_embedding))


def test_resize_matrix_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 1, 7, 1)).astype("float64")
    for out, scale in [(3, 3.1 / 7), (12, 12.1 / 7), (5, None)]:
        if scale is None:
            expected = F.interpolate(
                torch.tensor(x), size=(out, 1), mode="bicubic"
            )
            matrix = bicubic_resize_matrix(7, out)
        else:
            expected = F.interpolate(
                torch.tensor(x), scale_factor=(scale, 1.0), mode="bicubic"
            )
            matrix = bicubic_resize_matrix(7, out, scale_factor=scale)
        np.testing.assert_allclose(
            matrix @ x[0, 0, :, 0], expected.numpy()[0, 0, :, 0], atol=1e-6
        )


def test_forward_equals_numpy_patches(tiny):
    patch, dim = 4, 6
    layer = PatchEmbedding(patch, dim, 16)
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 16, 24, 3)).astype("float32")
    out = tiny.np(layer(images))
    assert out.shape == (2, 4 * 6 + 1, dim)
    kernel = tiny.np(layer.projection.kernel).reshape(-1, dim)
    bias = tiny.np(layer.projection.bias)
    patches = images.reshape(2, 4, patch, 6, patch, 3).transpose(
        0, 1, 3, 2, 4, 5
    )
    tokens = patches.reshape(2, 24, -1) @ kernel + bias
    pos = tiny.np(layer.interpolated_position_embedding(16, 24))
    cls = np.broadcast_to(tiny.np(layer.cls_token), (2, 1, dim))
    expected = np.concatenate([cls, tokens], 1) + pos
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert layer.compute_output_shape((2, 16, 24, 3)) == (2, 25, dim)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="multiple"):
        PatchEmbedding(16, 8, image_size=100)
    layer = PatchEmbedding(8, 4, 32)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        layer(np.zeros((1, 30, 32, 3), "float32"))


def test_config_and_saving(tiny, tmp_path):
    layer = PatchEmbedding(8, 4, 32, name="pe")
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3))
    images = images.astype("float32")
    out, cloned, reloaded = tiny.layer_round_trip(layer, images, tmp_path)
    np.testing.assert_allclose(cloned, out, atol=1e-6)
    np.testing.assert_allclose(reloaded, out, atol=1e-6)
