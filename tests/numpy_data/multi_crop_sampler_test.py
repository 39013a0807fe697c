"""MultiCropSampler: the tf.data pipeline's distributions, drawn in NumPy.

The rates of the random ops and the jitter, order and sigma distributions
are tested for both evaluations in tests/data/multi_crop_test.py.
"""

import math

import numpy as np
import pytest
from scipy import stats

from keras_dino.numpy_data import MultiCropSampler
from keras_dino.numpy_data.multi_crop_sampler import UNIFORMS_PER_CROP

N = 3000
P_MIN = 1e-3  # fixed seeds: the tests cannot flake


def assert_rate(flags, p):
    n = len(flags)
    k = int(np.sum(flags))
    bound = 5 * math.sqrt(n * p * (1 - p)) + 1
    assert abs(k - n * p) <= bound, f"{k}/{n} vs p={p}"


@pytest.fixture(scope="module")
def default_params():
    sampler = MultiCropSampler(seed=0)
    return sampler.sample([(800, 800)] * N)


def test_same_parameters_as_the_tf_data_pipeline():
    # The same uniform draws through the TensorFlow evaluation of
    # `keras_dino.data.MultiCropAugmentation` give the same parameters, for
    # images of several shapes (also ones that need the fallback crop).
    import tensorflow as tf

    from keras_dino.data import MultiCropAugmentation
    from keras_dino.data.random_resized_crop import TF_NAMESPACE

    kwargs = dict(global_crop_size=32, local_crop_size=16, num_local_crops=3)
    tf_augment = MultiCropAugmentation(**kwargs, seed=1)
    sampler = MultiCropSampler(**kwargs, seed=1)
    rng = np.random.default_rng(0)
    u = rng.random((4, 5, UNIFORMS_PER_CROP), dtype=np.float32)
    u[3, :, 0:40:4] = 0.999  # area > image: every try rejected
    shapes = [(224, 224), (50, 400), (333, 37), (10, 12)]
    for image_u, (h, w) in zip(u, shapes):
        expected = tf_augment.params_from_uniforms(
            tf.constant(image_u), tf.constant(h), tf.constant(w), TF_NAMESPACE
        )
        got = sampler.params_from_uniforms(image_u, h, w)
        assert set(got) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value.numpy(), rtol=1e-6)
    batched = sampler.params_from_uniforms(
        u, np.array(shapes)[:, :1], np.array(shapes)[:, 1:]
    )
    for i, (h, w) in enumerate(shapes):
        single = sampler.params_from_uniforms(u[i], h, w)
        np.testing.assert_array_equal(batched["boxes"][i], single["boxes"])


def test_crop_geometry(default_params):
    boxes = default_params["boxes"]
    top, left, h, w = np.moveaxis(boxes, -1, 0)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 800).all() and (left + w <= 800).all()
    area = h * w / 800**2
    # Global crops: in [0.4, 1] (rounding to pixels moves areas by < 0.3%).
    assert area[:, :2].min() > 0.4 - 3e-3 and area[:, :2].max() <= 1.0
    # Local crops are never rejected: area uniform, log-ratio uniform.
    local = (slice(None), slice(2, None))
    area_dist = stats.uniform(0.05, 0.35)
    assert stats.kstest(area[local].ravel(), area_dist.cdf).pvalue > P_MIN
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    log_ratio = np.log(w[local] / h[local]).ravel()
    ratio_dist = stats.uniform(lo, hi - lo)
    assert stats.kstest(log_ratio, ratio_dist.cdf).pvalue > P_MIN
    # Positions uniform over the free range.
    position = ((top + 0.5) / (800 - h + 1))[local].ravel()
    assert stats.kstest(position, "uniform").pvalue > P_MIN


def test_reproducible_and_independent():
    sampler = MultiCropSampler(seed=0)
    a = sampler.sample([(100, 120)] * 4, rng=7)
    b = sampler.sample([(100, 120)] * 4, rng=np.random.default_rng(7))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = sampler.sample([(100, 120)] * 4, rng=8)
    assert not np.array_equal(a["boxes"], c["boxes"])
    own = MultiCropSampler(seed=0).sample([(100, 120)] * 4)
    again = MultiCropSampler(seed=0).sample([(100, 120)] * 4)
    np.testing.assert_array_equal(own["boxes"], again["boxes"])


def test_config_round_trip_and_errors():
    sampler = MultiCropSampler(32, 16, 2, blur_sigma=(0.5, 1.0), seed=3)
    clone = MultiCropSampler.from_config(sampler.get_config())
    assert clone.get_config() == sampler.get_config()
    assert sampler.blur_kernel_size == 7
    assert sampler.crop_sizes == (32, 32, 16, 16)
    with pytest.raises(ValueError, match="image_shapes"):
        sampler.sample([100, 120])
    with pytest.raises(ValueError, match="probability"):
        MultiCropSampler(flip_prob=1.5)
