"""Readers for in-memory image arrays and `.npz` archives."""

import os

import numpy as np
import tensorflow as tf

from keras_dino.data import pipeline

# Float images are in [0, 1]; this much above 1 (e.g. a resampling
# overshoot) is still accepted, anything larger means a [0, 255] float
# array, which would saturate to white.
_FLOAT_MAX_TOLERANCE = 1e-2


def _check_arrays(images, labels):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "`images` must have shape (N, H, W, C) with C in {1, 3, 4}, or "
            f"(N, H, W) for grayscale. Received shape {images.shape}."
        )
    if not (images.dtype == np.uint8 or images.dtype.kind == "f"):
        raise ValueError(
            "`images` must be uint8 in [0, 255] or float in [0, 1]. "
            f"Received dtype {images.dtype}."
        )
    if len(images) == 0:
        raise ValueError("`images` is empty.")
    if images.dtype.kind == "f":
        largest = float(np.nanmax(images)) if images.size else 0.0
        if largest > 1.0 + _FLOAT_MAX_TOLERANCE:
            raise ValueError(
                "Float `images` must hold values in [0, 1], but their "
                f"largest value is {largest:g}: values in [0, 255] would "
                "all saturate to white. Pass them as uint8 "
                "(`images.astype('uint8')`) or divide them by 255."
            )
    if labels is None:
        labels = np.full([len(images)], -1, np.int64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(
            f"`labels` must have one entry per image: got {len(labels)} "
            f"labels for {len(images)} images."
        )
    return images, labels


def from_arrays(
    images,
    labels=None,
    augmentation=None,
    batch_size=64,
    *,
    with_labels=False,
    shuffle=True,
    seed=None,
    drop_remainder=True,
    shuffle_buffer_size=None,
    num_shards=None,
    shard_index=None,
    num_parallel_calls=pipeline.AUTOTUNE,
    deterministic=None,
):
    """A batched dataset of augmented images from an array of images.

    Args:
        images: array `(N, H, W, C)` (C = 1, 3 or 4) or `(N, H, W)`, uint8
            in [0, 255] or float in [0, 1]; a float array with values above
            1.01 (e.g. floats in [0, 255]) is refused with a `ValueError`.
        labels: optional int array `(N,)`; -1 everywhere when `None`.
        augmentation: callable `(image, seed) -> crops`, by default
            `MultiCropAugmentation(seed=seed)`.
        batch_size: number of images per batch.
        with_labels: if true, elements are `(crops, labels)`.
        shuffle: whether to shuffle (again every epoch).
        seed: int seed of the shuffling and of the augmentation.
        drop_remainder: whether to drop the last incomplete batch.
        shuffle_buffer_size: defaults to `N`.
        num_shards: optional sharding (e.g. the number of workers): shard
            `i` yields batches `i, i + num_shards, ...` of the unsharded
            dataset with the same seed, and augments only its own images.
        shard_index: the shard to keep, in `[0, num_shards)`.
        num_parallel_calls: parallelism of the augmentation.
        deterministic: keep the element order under parallel maps; by
            default true when `seed` is given.

    Returns:
        A `tf.data.Dataset` of tuples of batched float32 crops (or
        `(crops, labels)` with `with_labels=True`).

    Example:

    ```python
    ds = from_arrays(x_train, batch_size=256, seed=0,
                     augmentation=MultiCropAugmentation(32, 16, seed=0))
    ```
    """
    pipeline.check_batch_size(batch_size)
    pipeline.check_sharding(num_shards, shard_index)
    augmentation = pipeline.default_augmentation(augmentation, seed)
    images, labels = _check_arrays(images, labels)
    deterministic = pipeline.resolve_deterministic(deterministic, seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = pipeline.seeded(
        dataset,
        seed,
        shuffle,
        shuffle_buffer_size or len(images),
        num_shards,
        shard_index,
        batch_size,
    )
    return pipeline.augment_and_batch(
        dataset,
        augmentation,
        batch_size,
        with_labels,
        drop_remainder,
        num_parallel_calls,
        deterministic,
    )


def load_npz(paths, max_examples=None):
    """Loads and concatenates the `images` and `labels` of `.npz` files.

    The one `.npz` contract of keras_dino: key `images`, uint8 `(N, H, W,
    C)` (C = 1, 3 or 4) or `(N, H, W)`, and optional key `labels`, int
    `(N,)`.

    Args:
        paths: a path or a list of paths of `.npz` files.
        max_examples: optional int, keep the first rows only.

    Returns:
        Tuple `(images, labels)`; labels are int64, -1 for files without
        them.

    Example:
    >>> images, labels = load_npz(["part1.npz", "part2.npz"])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("`paths` is empty: give at least one .npz file.")
    images, labels = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise ValueError(
                    f"{os.fspath(path)!r} has no `images` array. Found keys: "
                    f"{sorted(data.keys())}."
                )
            count = len(data["images"])
            images.append(data["images"])
            if "labels" in data:
                file_labels = data["labels"].astype(np.int64).reshape(-1)
                if len(file_labels) != count:
                    raise ValueError(
                        f"{os.fspath(path)!r} holds {count} images but "
                        f"{len(file_labels)} labels."
                    )
                labels.append(file_labels)
            else:
                labels.append(np.full([count], -1, np.int64))
    images, labels = np.concatenate(images), np.concatenate(labels)
    if max_examples is not None:
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels


def from_npz(paths, augmentation=None, batch_size=64, **kwargs):
    """`from_arrays` on the concatenated `images`/`labels` of `.npz` files.

    Args:
        paths: a path or a list of paths of `.npz` files (see
            `load_npz`).
        augmentation: callable `(image, seed) -> crops`, by default
            `MultiCropAugmentation(seed=seed)`.
        batch_size: number of images per batch.
        **kwargs: other arguments of `from_arrays` (`with_labels`, `seed`,
            `shuffle`, ...).

    Returns:
        A `tf.data.Dataset`, see `from_arrays`.
    """
    images, labels = load_npz(paths)
    return from_arrays(images, labels, augmentation, batch_size, **kwargs)
