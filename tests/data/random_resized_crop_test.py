import math

import numpy as np
import pytest
from scipy import stats

from keras_dino.data.random_resized_crop import sample_crop_boxes

# tf.data only (keras_dino.data never reads the Keras backend): these run
# in the tensorflow pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("tensorflow")

RATIO = (3.0 / 4.0, 4.0 / 3.0)
N = 4000
P_MIN = 1e-3  # deterministic seeds: the tests cannot flake


def torchvision_boxes(rng, height, width, scale, ratio, n):
    """numpy copy of `torchvision.transforms.RandomResizedCrop.get_params`."""
    boxes = []
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(n):
        for _ in range(10):
            target_area = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(rng.integers(0, height - h + 1))
                j = int(rng.integers(0, width - w + 1))
                boxes.append((i, j, h, w))
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w = width
                h = int(round(w / min(ratio)))
            elif in_ratio > max(ratio):
                h = height
                w = int(round(h * max(ratio)))
            else:
                w, h = width, height
            boxes.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(boxes)


def boxes(shape, scale, seed=0, n=N):
    return sample_crop_boxes(shape, n, scale, RATIO, seed=(seed, 1)).numpy()


def check_in_bounds(b, height, width):
    top, left, h, w = b.T
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()


@pytest.mark.parametrize("shape", [(800, 800), (800, 1000), (1000, 700)])
def test_area_and_log_ratio_are_uniform_without_rejection(shape):
    b = boxes(shape, (0.05, 0.4))
    check_in_bounds(b, *shape)
    area = b[:, 2] * b[:, 3] / (shape[0] * shape[1])
    log_ratio = np.log(b[:, 3] / b[:, 2])
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    assert stats.kstest(area, stats.uniform(0.05, 0.35).cdf).pvalue > P_MIN
    assert stats.kstest(log_ratio, stats.uniform(lo, hi - lo).cdf).pvalue > (
        P_MIN
    )


@pytest.mark.parametrize(
    "shape, scale",
    [
        ((224, 224), (0.4, 1.0)),
        ((300, 500), (0.4, 1.0)),
        ((500, 280), (0.4, 1.0)),
        ((224, 224), (0.05, 0.4)),
        ((60, 90), (0.05, 0.4)),
    ],
)
def test_matches_torchvision_distribution(shape, scale):
    ours = boxes(shape, scale, seed=3)
    ref = torchvision_boxes(np.random.default_rng(0), *shape, scale, RATIO, N)
    check_in_bounds(ours, *shape)
    for column in (
        lambda b: b[:, 2] * b[:, 3],
        lambda b: np.log(b[:, 3] / b[:, 2]),
        lambda b: b[:, 0] / np.maximum(shape[0] - b[:, 2], 1),
        lambda b: b[:, 1] / np.maximum(shape[1] - b[:, 3], 1),
    ):
        assert stats.ks_2samp(column(ours), column(ref)).pvalue > P_MIN


def test_fallback_is_central_crop_clamped_to_ratio():
    # A very wide image: no try can fit, the fallback clamps the ratio.
    b = boxes((10, 400), (0.9, 1.0), n=50)
    np.testing.assert_array_equal(b, [[0, 193, 10, 13]] * 50)
    b = boxes((400, 10), (0.9, 1.0), n=50)
    np.testing.assert_array_equal(b, [[193, 0, 13, 10]] * 50)


def test_fallback_rate_matches_torchvision():
    shape, scale = (224, 224), (0.9, 1.0)
    ours = boxes(shape, scale, seed=5)
    ref = torchvision_boxes(np.random.default_rng(1), *shape, scale, RATIO, N)
    full = (ours[:, 2] == 224) & (ours[:, 3] == 224)
    ref_full = (ref[:, 2] == 224) & (ref[:, 3] == 224)
    p = ref_full.mean()
    assert abs(full.mean() - p) < 5 * math.sqrt(p * (1 - p) / N) + 2 / N


def test_tiny_and_one_pixel_images():
    for shape in [(1, 1), (2, 5), (7, 3)]:
        b = boxes(shape, (0.05, 0.4), n=200)
        check_in_bounds(b, *shape)


def test_same_seed_same_boxes():
    np.testing.assert_array_equal(
        boxes((300, 400), (0.05, 0.4), seed=7, n=10),
        boxes((300, 400), (0.05, 0.4), seed=7, n=10),
    )
    assert not np.array_equal(
        boxes((300, 400), (0.05, 0.4), seed=7, n=10),
        boxes((300, 400), (0.05, 0.4), seed=8, n=10),
    )


def test_bad_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="scale"):
        sample_crop_boxes((10, 10), 1, scale=(0.5, 0.1))
