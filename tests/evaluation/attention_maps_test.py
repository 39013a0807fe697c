"""Tests of CLS attention maps, thresholded masks and their PNG files."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dino.evaluation import attention_maps
from keras_dino.evaluation import save_attention_figure
from keras_dino.evaluation import save_attention_maps
from keras_dino.evaluation import threshold_masks
from keras_dino.evaluation import upsample_nearest
from keras_dino.evaluation import visualize_attention
from keras_dino.evaluation.attention_maps import crop_to_patch_multiple
from keras_dino.layers import ImagePreprocessing
from keras_dino.models import ViTBackbone


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return ViTBackbone(
        image_size=32, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2
    )


def test_threshold_masks_hand_made():
    # Sorted: .1 .15 .25 .5, cumulative .1 .25 .5 1.; kept where > 0.4.
    attention = np.array([0.1, 0.5, 0.15, 0.25])
    mask = threshold_masks(attention, keep=0.6)
    assert mask.tolist() == [False, True, False, True]
    # Unnormalised values and several heads: each head on its own.
    heads = np.array([[1.0, 5.0, 1.5, 2.5], [4.0, 3.0, 2.0, 1.0]])
    masks = threshold_masks(heads, keep=0.6)
    # Head 1: sorted 1 2 3 4 (/10), cumulative .1 .3 .6 1. -> keep 3, 4.
    assert masks.tolist() == [
        [False, True, False, True],
        [True, True, False, False],
    ]
    # keep=0.3 on head 1: only the largest (cumulative 1.0 > 0.7).
    assert threshold_masks(heads[1], keep=0.3).tolist() == [
        True,
        False,
        False,
        False,
    ]
    # Grids are thresholded over all their cells.
    grid = threshold_masks(heads.reshape(2, 2, 2), keep=0.6)
    assert grid.shape == (2, 2, 2)
    np.testing.assert_array_equal(grid.reshape(2, 4), masks)
    with pytest.raises(ValueError, match="keep"):
        threshold_masks(attention, keep=0.0)


def test_upsample_nearest_and_crop():
    maps = np.arange(4.0).reshape(1, 2, 2)
    up = upsample_nearest(maps, 2)
    assert up[0].tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]
    image = np.zeros((1, 37, 42, 3))
    assert crop_to_patch_multiple(image, 8).shape == (1, 32, 40, 3)
    with pytest.raises(ValueError, match="smaller than one patch"):
        crop_to_patch_multiple(np.zeros((4, 4, 3)), 8)


def test_attention_maps_shapes_and_values(backbone):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 42, 3)).astype("uint8")
    prep = ImagePreprocessing()
    maps = attention_maps(backbone, image, preprocessing=prep)
    assert maps.shape == (2, 32, 40) and maps.dtype == np.float32
    grid = attention_maps(backbone, image, preprocessing=prep, upsample=False)
    assert grid.shape == (2, 4, 5)
    np.testing.assert_array_equal(upsample_nearest(grid, 8), maps)
    # The grid is the CLS row of the last attention, without the CLS column.
    x = prep(image[None])[:, :32, :40]
    attention = ops.convert_to_numpy(backbone.get_last_self_attention(x))
    np.testing.assert_allclose(
        grid, attention[0, :, 0, 1:].reshape(2, 4, 5), atol=1e-6
    )
    assert np.all(grid.sum(axis=(1, 2)) <= 1.0 + 1e-5)
    with pytest.raises(ValueError, match="one \\(height, width, 3\\)"):
        attention_maps(backbone, image[None])


def test_visualize_attention_writes_pngs(backbone, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), "uint8")
    maps, masks, paths = visualize_attention(
        backbone,
        image,
        str(tmp_path),
        preprocessing=ImagePreprocessing(),
    )
    assert maps.shape == masks.shape == (2, 32, 32) and masks.dtype == bool
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        ["img.png"]
        + [f"attn-head{h}.png" for h in range(2)]
        + [f"attn-overlay-head{h}.png" for h in range(2)]
        + [f"mask_th0.6_head{h}.png" for h in range(2)]
    )
    assert len(paths) == 7
    picture = matplotlib.image.imread(str(tmp_path / "mask_th0.6_head1.png"))
    assert picture.shape[:2] == (32, 32)
    with pytest.raises(ValueError, match="differ in shape"):
        save_attention_maps(image, maps, str(tmp_path), masks=masks[:1])


def test_save_attention_figure_grid(backbone, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(3):
        image = rng.integers(0, 256, (32, 32, 3), "uint8")
        maps, masks, _ = visualize_attention(
            backbone, image, str(tmp_path / "x"), keep=0.6
        )
        rows.append((image, maps, masks))
    path = save_attention_figure(rows, str(tmp_path / "fig.png"))
    picture = matplotlib.image.imread(path)
    # 3 rows x (1 image + 2 heads) panels of 1.6 in at 110 dpi.
    assert picture.shape[:2] == (round(3 * 1.6 * 110), round(3 * 1.6 * 110))
    assert picture[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="same number of heads"):
        save_attention_figure(
            [rows[0], (rows[1][0], rows[1][1][:1])], str(tmp_path / "b.png")
        )
    with pytest.raises(ValueError, match="one per row"):
        save_attention_figure(rows, str(tmp_path / "c.png"), titles=["a"])
