"""Self-attention maps of the CLS token (the reference
`visualize_attention.py`).

For one image: the last block's attention of the CLS token to every patch,
per head, reshaped to the patch grid and upsampled (nearest neighbour, by
the patch size) to the image; and the thresholded masks that keep the
patches holding 60% of each head's attention mass. PNG helpers write the
per-head heat maps, overlays and masks with matplotlib (imported lazily; it
is only needed to save pictures).
"""

import os

import numpy as np
from keras import ops


def _patch_size(backbone, patch_size):
    patch_size = patch_size or getattr(backbone, "patch_size", None)
    if not patch_size:
        raise ValueError("Pass patch_size: the backbone has no `patch_size`.")
    return int(patch_size)


def crop_to_patch_multiple(image, patch_size):
    """Crops `(..., H, W, C)` at the top left to multiples of `patch_size`.

    The reference does the same (`img[:, :w - w % p, :h - h % p]`).
    """
    height, width = image.shape[-3:-1]
    height, width = height - height % patch_size, width - width % patch_size
    if height == 0 or width == 0:
        raise ValueError(
            f"Image of size {image.shape[-3:-1]} is smaller than one patch "
            f"({patch_size} px)."
        )
    return image[..., :height, :width, :]


def upsample_nearest(maps, scale):
    """Nearest-neighbour upsampling of the last two axes by an int factor.

    Same as `torch.nn.functional.interpolate(mode="nearest",
    scale_factor=scale)` for an integer scale.
    """
    maps = np.asarray(maps)
    return np.repeat(np.repeat(maps, scale, axis=-2), scale, axis=-1)


def attention_maps(
    backbone, image, preprocessing=None, patch_size=None, upsample=True
):
    """Per-head CLS-token attention of the last block.

    Args:
        backbone: a `ViTBackbone` (or anything with `patch_size` and
            `get_last_self_attention(images)` returning
            `(batch, heads, tokens, tokens)` with the CLS token first).
        image: one `(height, width, 3)` image, ready for the backbone
            unless `preprocessing` is given. It is cropped at the top left
            to multiples of the patch size, as in the reference.
        preprocessing: optional callable applied to the image batch
            `image[None]` first, e.g.
            `keras_dino.layers.ImagePreprocessing()` (ImageNet
            normalisation).
        patch_size: int; defaults to `backbone.patch_size`.
        upsample: bool. True: maps at the (cropped) image size, each patch
            repeated `patch_size` times per side (nearest). False: maps on
            the patch grid.

    Returns:
        A float32 numpy array `(num_heads, height, width)` (or
        `(num_heads, grid_height, grid_width)` when `upsample=False`).

    Example:
    >>> backbone = ViTBackbone.from_variant("ViT-S/8")
    >>> image = np.zeros((224, 224, 3), "uint8")
    >>> maps = attention_maps(
    ...     backbone, image, preprocessing=ImagePreprocessing()
    ... )
    >>> maps.shape
    (6, 224, 224)
    """
    patch_size = _patch_size(backbone, patch_size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Expected one (height, width, 3) image; got shape {image.shape}."
        )
    batch = image[None]
    if preprocessing is not None:
        batch = ops.convert_to_numpy(preprocessing(batch))
    batch = crop_to_patch_multiple(batch, patch_size).astype("float32")
    grid_h = batch.shape[1] // patch_size
    grid_w = batch.shape[2] // patch_size
    attention = ops.convert_to_numpy(
        backbone.get_last_self_attention(batch, training=False)
    )
    if attention.ndim != 4 or attention.shape[-1] != grid_h * grid_w + 1:
        raise ValueError(
            "Expected attention (batch, heads, tokens, tokens) with "
            f"{grid_h * grid_w + 1} tokens; got {attention.shape}."
        )
    maps = attention[0, :, 0, 1:].reshape(-1, grid_h, grid_w)
    maps = maps.astype("float32")
    return upsample_nearest(maps, patch_size) if upsample else maps


def threshold_masks(attention, keep=0.6):
    """Masks of the largest entries holding `keep` of the attention mass.

    As in the reference: per head, sort the attention ascending, normalise
    it to sum to 1, take the cumulative sum and keep the entries whose
    cumulative mass is `> 1 - keep`, then undo the sort. Apply it on the
    patch grid (`attention_maps(..., upsample=False)`) and upsample the mask
    with `upsample_nearest`, as the reference does.

    Args:
        attention: `(num_heads, ...)` non-negative attention; all axes
            after the first (e.g. the patch grid) are thresholded together.
            A 1-D vector is treated as a single head.
        keep: float in (0, 1], the fraction of the mass to keep (0.6).

    Returns:
        A boolean array with the shape of `attention`.

    Example:
    >>> threshold_masks(np.array([0.1, 0.5, 0.15, 0.25]), keep=0.6)
    array([False,  True, False,  True])
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1]; got {keep}.")
    attention = np.asarray(attention, dtype="float32")
    if attention.ndim == 0:
        raise ValueError("attention must have at least one axis.")
    flat = attention.reshape(1 if attention.ndim == 1 else len(attention), -1)
    order = np.argsort(flat, axis=1, kind="stable")
    values = np.take_along_axis(flat, order, axis=1)
    values = values / np.sum(values, axis=1, keepdims=True)
    sorted_mask = np.cumsum(values, axis=1) > 1.0 - keep
    mask = np.empty_like(sorted_mask)
    np.put_along_axis(mask, order, sorted_mask, axis=1)
    return mask.reshape(attention.shape)


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.image
    except ImportError as e:
        raise ImportError(
            "Saving attention pictures needs matplotlib: pip install matplotlib"
        ) from e
    return matplotlib


def _as_rgb_float(image):
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype("float32") / 255.0
    image = image.astype("float32")
    low, high = image.min(), image.max()  # e.g. a normalised image
    if low < 0.0 or high > 1.0:
        image = (image - low) / max(high - low, 1e-12)
    return image


def _normalise(x):
    x = np.asarray(x, dtype="float32")
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def save_attention_maps(
    image,
    maps,
    output_dir,
    masks=None,
    keep=0.6,
    cmap="inferno",
    alpha=0.5,
):
    """Writes the attention pictures of one image as PNG files.

    Files (names as in the reference where it has them): `img.png`, the
    image; `attn-head{h}.png`, the raw heat map of head `h` (viridis, as
    `plt.imsave`); `attn-overlay-head{h}.png`, the heat map blended over
    the image; and, when `masks` is given, `mask_th{keep}_head{h}.png`, the
    image with the mask of head `h` coloured in.

    Args:
        image: `(height, width, 3)` image (uint8, or float; floats outside
            [0, 1] are min-max scaled), cropped to the maps' size.
        maps: `(num_heads, height, width)` maps from `attention_maps`.
        output_dir: folder, created if needed.
        masks: optional boolean `(num_heads, height, width)` masks.
        keep: float, only used in the mask file names.
        cmap: matplotlib colormap of the overlays.
        alpha: float, heat-map / mask opacity in the overlays.

    Returns:
        The list of written file paths.

    Example:
    >>> maps = attention_maps(backbone, x, preprocessing=fn, upsample=False)
    >>> masks = upsample_nearest(threshold_masks(maps), backbone.patch_size)
    >>> save_attention_maps(
    ...     image, upsample_nearest(maps, 16), "out", masks=masks
    ... )
    """
    matplotlib = _matplotlib()
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (heads, H, W); got {maps.shape}.")
    height, width = maps.shape[1:]
    image = _as_rgb_float(image)
    if image.shape[0] < height or image.shape[1] < width:
        raise ValueError(
            f"Image {image.shape[:2]} is smaller than the maps "
            f"{(height, width)}."
        )
    image = image[:height, :width, :3]
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != maps.shape:
            raise ValueError(
                f"masks {masks.shape} and maps {maps.shape} differ in shape."
            )
    os.makedirs(output_dir, exist_ok=True)
    colormap = matplotlib.colormaps[cmap]
    written = []

    def save(name, array, **kwargs):
        path = os.path.join(output_dir, name)
        matplotlib.image.imsave(path, array, format="png", **kwargs)
        written.append(path)

    save("img.png", image)
    colors = matplotlib.colormaps["tab10"]
    for h, head_map in enumerate(maps):
        save(f"attn-head{h}.png", head_map)
        heat = colormap(_normalise(head_map))[..., :3]
        save(f"attn-overlay-head{h}.png", (1 - alpha) * image + alpha * heat)
        if masks is not None:
            color = np.asarray(colors(h % 10)[:3], dtype="float32")
            mask = masks[h][..., None]
            blended = np.where(mask, (1 - alpha) * image + alpha * color, image)
            save(f"mask_th{keep}_head{h}.png", np.clip(blended, 0, 1))
    return written


def visualize_attention(
    backbone, image, output_dir, preprocessing=None, keep=0.6, **kwargs
):
    """Attention maps, thresholded masks and their PNGs for one image.

    Args:
        backbone: a `ViTBackbone`.
        image: `(height, width, 3)` uint8 image as displayed.
        output_dir: folder for the PNG files.
        preprocessing: callable making the backbone input from `image[None]`
            (e.g. `keras_dino.layers.ImagePreprocessing()`, without
            resizing so that the maps line up with the image).
        keep: float or `None`; mass kept by the masks (`None`: no masks).
        **kwargs: passed to `save_attention_maps`.

    Returns:
        `(maps, masks, paths)`: upsampled maps `(heads, H, W)`, boolean
        masks (or `None`) and the written files.

    Example:
    >>> maps, masks, paths = visualize_attention(
    ...     backbone, image, "out", preprocessing=ImagePreprocessing()
    ... )
    """
    patch_size = _patch_size(backbone, None)
    grid_maps = attention_maps(
        backbone, image, preprocessing=preprocessing, upsample=False
    )
    maps = upsample_nearest(grid_maps, patch_size)
    masks = None
    if keep is not None:
        masks = upsample_nearest(threshold_masks(grid_maps, keep), patch_size)
    paths = save_attention_maps(
        image, maps, output_dir, masks=masks, keep=keep, **kwargs
    )
    return maps, masks, paths


def save_attention_figure(rows, path, titles=None, cmap="inferno", alpha=0.5):
    """Writes one PNG grid: per image, the image, then each head's overlay.

    This is the paper's figure layout: one row per image, the image in the
    first column, and each head's CLS attention blended over it, with the
    head's thresholded mask outlined where masks are given.

    Args:
        rows: list of `(image, maps)` or `(image, maps, masks)` tuples, with
            `maps` and `masks` as returned by `visualize_attention` (all
            rows with the same number of heads).
        path: output PNG file.
        titles: optional list of row labels (e.g. class names).
        cmap: matplotlib colormap of the heat maps.
        alpha: heat-map opacity.

    Returns:
        `path`.

    Example:
    >>> maps, masks, _ = visualize_attention(backbone, image, "out")
    >>> save_attention_figure([(image, maps, masks)], "figure.png")
    """
    _matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: pass at least one (image, maps).")
    heads = {np.asarray(row[1]).shape[0] for row in rows}
    if len(heads) != 1:
        raise ValueError(f"All rows need the same number of heads: {heads}.")
    num_heads = heads.pop()
    if titles is not None and len(titles) != len(rows):
        raise ValueError(
            f"{len(titles)} titles for {len(rows)} rows; pass one per row."
        )
    colormap = matplotlib.colormaps[cmap]
    fig, axes = plt.subplots(
        len(rows),
        num_heads + 1,
        figsize=(1.6 * (num_heads + 1), 1.6 * len(rows)),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        image, maps = row[0], np.asarray(row[1])
        masks = row[2] if len(row) > 2 else None
        height, width = maps.shape[1:]
        image = _as_rgb_float(image)[:height, :width, :3]
        axes[r, 0].imshow(image)
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r], fontsize=7)
        for h in range(num_heads):
            heat = colormap(_normalise(maps[h]))[..., :3]
            axes[r, h + 1].imshow((1 - alpha) * image + alpha * heat)
            if masks is not None:
                axes[r, h + 1].contour(
                    np.asarray(masks[h], dtype=float),
                    levels=[0.5],
                    colors="cyan",
                    linewidths=0.6,
                )
            if r == 0:
                axes[r, h + 1].set_title(f"head {h}", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
