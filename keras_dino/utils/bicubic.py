"""PyTorch-exact bicubic resampling matrices, computed with numpy.

The reference DINO resizes its learned position embedding with
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` and a
*scale factor*. TensorFlow and JAX use a different cubic kernel (a = -0.5
instead of PyTorch's a = -0.75) and map coordinates from the target size, so
their resizes differ from the reference. A 1-D bicubic resize is linear, so it
is a matrix; the 2-D separable resize is `R_h @ grid @ R_w^T`. Building the
matrices here once, in float64, gives the reference's numbers on every
backend.
"""

import numpy as np

CUBIC_A = -0.75


def _cubic_weights(t):
    """PyTorch's `get_cubic_upsample_coefficients` for offsets `t`."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], -1)


def bicubic_resize_matrix(in_size, out_size, scale_factor=None):
    """Matrix `M` (out_size, in_size) so that `M @ x` resizes `x` like torch.

    Args:
        in_size: int, length of the input axis.
        out_size: int, length of the output axis.
        scale_factor: optional float. When given, source coordinates follow
            `(i + 0.5) / scale_factor - 0.5`, as PyTorch does when
            `interpolate` is called with `scale_factor`; otherwise they follow
            `in_size / out_size`, as when it is called with `size`.

    Returns:
        A float64 numpy array of shape `(out_size, in_size)`.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(
            f"Sizes must be positive, got in_size={in_size}, "
            f"out_size={out_size}."
        )
    if scale_factor is not None:
        # PyTorch keeps the scale as float32 (its CPU kernel's opmath type).
        scale = np.float32(1.0 / scale_factor)
    else:
        scale = np.float32(in_size / out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    base = np.floor(src)
    t = (src - base).astype(np.float64)
    weights = _cubic_weights(t)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(matrix, (rows, idx), weights[:, k])
    return matrix


def dino_position_grid_matrices(grid_size, height, width, patch_size):
    """Row and column resize matrices used by DINO's `interpolate_pos_encoding`.

    For an input of `height x width` pixels the reference resizes its
    `grid_size x grid_size` position grid with scale factors
    `(height // patch + 0.1) / grid_size` and `(width // patch + 0.1) /
    grid_size`, which yields `height // patch x width // patch` cells.

    Returns:
        `(rows, cols)`: float64 arrays of shapes `(height // patch_size,
        grid_size)` and `(width // patch_size, grid_size)`.
    """
    out_h, out_w = height // patch_size, width // patch_size
    rows = bicubic_resize_matrix(
        grid_size, out_h, scale_factor=(out_h + 0.1) / grid_size
    )
    cols = bicubic_resize_matrix(
        grid_size, out_w, scale_factor=(out_w + 0.1) / grid_size
    )
    return rows, cols
