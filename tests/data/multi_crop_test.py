import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_dino.data import IMAGENET_MEAN
from keras_dino.data import IMAGENET_STD
from keras_dino.data import MultiCropAugmentation
from keras_dino.data import from_arrays
from keras_dino.numpy_data import MultiCropSampler

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)
OFF = dict(
    flip_prob=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    global_blur_probs=(0.0, 0.0),
    local_blur_prob=0.0,
    global_solarize_probs=(0.0, 0.0),
)
WHOLE = dict(global_crops_scale=(1.0, 1.0), local_crops_scale=(1.0, 1.0))
WHOLE.update(ratio=(1.0, 1.0))


def random_image(shape=(40, 50, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def crops_of(augmentation, image, n, seed=0):
    """All crops of `n` copies of `image`, one batch through `from_arrays`."""
    ds = from_arrays(
        np.repeat(image[None], n, axis=0),
        augmentation=augmentation,
        batch_size=n,
        shuffle=False,
        seed=seed,
    )
    return [c.numpy() for c in next(iter(ds))]


def unnormalize(x):
    return x * STD + MEAN


def assert_rate(flags, p):
    n = len(flags)
    k = int(np.sum(flags))
    bound = 5 * math.sqrt(n * p * (1 - p)) + 1
    assert abs(k - n * p) <= bound, f"{k}/{n} vs p={p}"


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_default_output_structure():
    augmentation = MultiCropAugmentation(seed=0)
    crops = augmentation(random_image((300, 200, 3)), seed=1)
    assert isinstance(crops, tuple) and len(crops) == 10
    for i, crop in enumerate(crops):
        size = 224 if i < 2 else 96
        assert crop.shape == (size, size, 3)
        assert crop.dtype == tf.float32
    assert augmentation.num_crops == 10
    assert augmentation.crop_sizes == (224,) * 2 + (96,) * 8


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_normalisation_with_imagenet_statistics():
    image = np.full((16, 16, 3), [10, 128, 250], np.uint8)
    augmentation = MultiCropAugmentation(16, 16, 1, **OFF, **WHOLE, seed=0)
    for crop in augmentation(image, seed=0):
        expected = (np.array([10, 128, 250]) / 255 - MEAN) / STD
        np.testing.assert_allclose(
            crop, np.broadcast_to(expected, (16, 16, 3)), atol=1e-5
        )


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_no_op_crop_is_identity():
    image = random_image((16, 16, 3))
    augmentation = MultiCropAugmentation(16, 16, 1, **OFF, **WHOLE, seed=0)
    for crop in augmentation(image, seed=0):
        np.testing.assert_allclose(
            unnormalize(crop.numpy()) * 255, image, atol=1e-3
        )


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((7, 5, 3), "uint8"),  # smaller than the crops
        ((30, 90, 3), "uint8"),  # non-square
        ((33, 20, 1), "uint8"),  # grayscale
        ((25, 25, 4), "uint8"),  # RGBA
        ((20, 30, 3), "float32"),  # float in [0, 1]
    ],
)
@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_image_kinds(shape, dtype):
    image = random_image(shape)
    if dtype == "float32":
        image = image.astype("float32") / 255
    augmentation = MultiCropAugmentation(32, 16, 2, seed=0)
    crops = augmentation(image, seed=3)
    assert [c.shape for c in crops] == [(32, 32, 3)] * 2 + [(16, 16, 3)] * 2
    for crop in crops:
        pixels = unnormalize(crop.numpy())
        assert np.isfinite(pixels).all()
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_grayscale_input_stays_gray_and_rgba_drops_alpha():
    augmentation = MultiCropAugmentation(16, 8, 1, **OFF, seed=0)
    gray = random_image((20, 20, 1))
    for crop in augmentation(gray, seed=0):
        pixels = unnormalize(crop.numpy())
        np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-5)
    rgba = random_image((20, 20, 4))
    for a, b in zip(augmentation(rgba, seed=0), augmentation(rgba[..., :3], 0)):
        np.testing.assert_allclose(a, b)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_same_seed_same_crops_and_other_seed_other_crops():
    image = random_image()
    augmentation = MultiCropAugmentation(32, 16, 2, seed=5)
    same = MultiCropAugmentation(32, 16, 2, seed=5)
    other = MultiCropAugmentation(32, 16, 2, seed=6)
    a, b, c = (aug(image, seed=11) for aug in (augmentation, same, other))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])
    d = augmentation(image, seed=12)
    assert not np.allclose(a[0], d[0])


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_parallel_map_is_deterministic():
    augmentation = MultiCropAugmentation(16, 8, 2, seed=0)
    images = np.stack([random_image((24, 24, 3), i) for i in range(16)])
    first = crops_of(augmentation, images[0], 16, seed=3)
    second = crops_of(augmentation, images[0], 16, seed=3)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    # Per-element seeds differ: copies of one image get different crops.
    assert not np.allclose(first[0][0], first[0][1])


def test_batch_converts_on_the_active_backend():
    augmentation = MultiCropAugmentation(16, 8, 2, seed=0)
    crops = crops_of(augmentation, random_image(), 4)
    for crop in crops:
        tensor = keras.ops.convert_to_tensor(crop)
        assert tuple(tensor.shape) == crop.shape
        assert keras.backend.standardize_dtype(tensor.dtype) == "float32"


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_config_round_trip():
    augmentation = MultiCropAugmentation(
        64, 32, 4, brightness=0.3, hue=(-0.05, 0.1), seed=3
    )
    config = augmentation.get_config()
    clone = MultiCropAugmentation.from_config(config)
    assert clone.get_config() == config
    image = random_image()
    for a, b in zip(augmentation(image, seed=1), clone(image, seed=1)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_crop_size=0), "global_crop_size"),
        (dict(num_local_crops=-1), "num_local_crops"),
        (dict(local_crops_scale=(0.5, 0.1)), "local_crops_scale"),
        (dict(flip_prob=1.5), "flip_prob"),
        (dict(hue=0.7), "hue"),
        (dict(global_blur_probs=(1.0,)), "global_blur_probs"),
        (dict(std=(0.0, 1.0, 1.0)), "std"),
    ],
)
@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiCropAugmentation(**kwargs)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_bad_image_is_a_clear_error():
    augmentation = MultiCropAugmentation(16, 8, 1)
    with pytest.raises(ValueError, match="batch after augmenting"):
        augmentation(np.zeros((2, 8, 8, 3), np.uint8), seed=0)
    with pytest.raises(ValueError, match="channels"):
        augmentation(np.zeros((8, 8, 2), np.uint8), seed=0)


# Rates of every random op, per crop position: the sampled decisions, of
# the tf.data pipeline and of the NumPy sampler of the device path.


@pytest.fixture(scope="module", params=["tf_data", "numpy"])
def default_params(request):
    """3000 draws, by TensorFlow (tf.data) or NumPy (the device path)."""
    augmentation = MultiCropAugmentation(seed=0)
    n = 3000
    if request.param == "numpy":
        return MultiCropSampler(seed=0).sample([(224, 224)] * n)
    ds = tf.data.Dataset.range(n).map(
        lambda i: augmentation.sample_params((224, 224), i)
    )
    return {k: v.numpy() for k, v in next(iter(ds.batch(n))).items()}


@pytest.mark.parametrize(
    "key, probs",
    [
        ("flip", [0.5] * 10),
        ("color_jitter", [0.8] * 10),
        ("grayscale", [0.2] * 10),
        ("blur", [1.0, 0.1] + [0.5] * 8),
        ("solarize", [0.0, 0.2] + [0.0] * 8),
    ],
)
@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_sampled_rates_per_crop_position(default_params, key, probs):
    for k, p in enumerate(probs):
        assert_rate(default_params[key][:, k], p)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_sampled_jitter_factors_order_and_sigma(default_params):
    factors = default_params["jitter_factors"].reshape(-1, 4)
    for column, (lo, hi) in enumerate(
        [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]
    ):
        dist = stats.uniform(lo, hi - lo)
        assert stats.kstest(factors[:, column], dist.cdf).pvalue > 1e-3
    sigma = default_params["blur_sigma"].reshape(-1)
    assert stats.kstest(sigma, stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
    order = default_params["jitter_order"].reshape(-1, 4)
    np.testing.assert_array_equal(
        np.sort(order, axis=1), [[0, 1, 2, 3]] * len(order)
    )
    codes = order @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_crop_positions_draw_independently(default_params):
    flips = default_params["flip"]
    agree = (flips[:, 0] == flips[:, 1]).mean()
    assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / len(flips))


# Rates of the ops as applied to pixels, per crop position.

N = 600
SMALL = dict(global_crop_size=16, local_crop_size=16, num_local_crops=2)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_flip_rate_on_pixels():
    ramp = np.tile(
        np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 3)
    )
    aug = MultiCropAugmentation(**SMALL, **{**OFF, "flip_prob": 0.5}, **WHOLE)
    for crop in crops_of(aug, ramp, N):
        flipped = crop[:, 0, 0, 0] > crop[:, 0, -1, 0]
        assert_rate(flipped, 0.5)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_color_jitter_and_grayscale_rates_on_pixels():
    image = np.full((16, 16, 3), [200, 90, 40], np.uint8)
    base = np.array([200, 90, 40]) / 255
    aug = MultiCropAugmentation(
        **SMALL, **{**OFF, "color_jitter_prob": 0.8}, **WHOLE
    )
    for crop in crops_of(aug, image, N):
        changed = np.abs(unnormalize(crop[:, 5, 5]) - base).max(-1) > 1e-4
        assert_rate(changed, 0.8)
    aug = MultiCropAugmentation(
        **SMALL, **{**OFF, "grayscale_prob": 0.2}, **WHOLE
    )
    for crop in crops_of(aug, image, N):
        pixel = unnormalize(crop[:, 5, 5])
        assert_rate(np.ptp(pixel, axis=-1) < 1e-4, 0.2)


@pytest.mark.backend_pass("tensorflow")  # tf.data only
def test_blur_and_solarize_rates_on_pixels():
    checker = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    checker = np.repeat(checker[..., None], 3, axis=-1)
    aug = MultiCropAugmentation(
        **SMALL,
        **{**OFF, "global_blur_probs": (1.0, 0.1), "local_blur_prob": 0.5},
        **WHOLE,
        blur_sigma=(1.0, 2.0),
    )
    for crop, p in zip(crops_of(aug, checker, N), (1.0, 0.1, 0.5, 0.5)):
        blurred = unnormalize(crop).std(axis=(1, 2, 3)) < 0.4
        assert_rate(blurred, p)
    image = np.full((16, 16, 3), 200, np.uint8)
    aug = MultiCropAugmentation(
        **SMALL,
        **{**OFF, "global_solarize_probs": (0.0, 0.2)},
        **WHOLE,
        local_solarize_prob=0.3,
    )
    for crop, p in zip(crops_of(aug, image, N), (0.0, 0.2, 0.3, 0.3)):
        solarized = np.abs(unnormalize(crop[:, 0, 0])[:, 0] - 55 / 255) < 1e-4
        assert_rate(solarized, p)
