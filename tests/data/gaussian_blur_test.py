import numpy as np
import pytest
from scipy import ndimage

from keras_dino.data.gaussian_blur import gaussian_blur
from keras_dino.data.gaussian_blur import gaussian_kernel_1d
from keras_dino.data.gaussian_blur import gaussian_kernel_size

# tf.data only (keras_dino.data never reads the Keras backend): these run
# in the tensorflow pass of the test command (tests/conftest.py).
pytestmark = pytest.mark.backend_pass("tensorflow")


def test_kernel_size_covers_three_sigma():
    assert gaussian_kernel_size(2.0) == 13
    assert gaussian_kernel_size(0.5) == 5


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_matches_truncated_gaussian_with_edge_replication(sigma):
    x = np.random.default_rng(0).random((20, 17, 3), dtype=np.float32)
    out = gaussian_blur(x, sigma, 13).numpy()
    expected = np.stack(
        [
            ndimage.gaussian_filter(
                x[..., c], sigma, mode="nearest", truncate=6 / sigma
            )
            for c in range(3)
        ],
        -1,
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_kernel_is_normalised_and_small_sigma_is_identity():
    k = gaussian_kernel_1d(1.3, 13).numpy()
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(k, k[::-1])
    x = np.random.default_rng(1).random((8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(gaussian_blur(x, 0.1, 13), x, atol=1e-6)
