"""Labelled images from a source string: `.npz` files, a folder or TFDS.

The evaluation recipes name their data with one string: comma-separated
`.npz` paths, an image folder (`root/<class>/<image>`), or
`tfds:<name>:<split>`. `labeled_dataset` streams such a source (or an
`(images, labels)` pair of arrays) through the reference evaluation
transform, `CenterCropTransform`; `load_labeled_images` reads it into
memory; `load_image` reads one file. All decoding is TensorFlow's
(`decode_image`): 16-bit PNGs are scaled to 8 bits, not saturated.
"""

import os

import numpy as np
import tensorflow as tf

from keras_dino.data import pipeline
from keras_dino.data.arrays import from_arrays
from keras_dino.data.arrays import load_npz
from keras_dino.data.bad_file_report import BadFileReport
from keras_dino.data.center_crop import CenterCropTransform
from keras_dino.data.image_folder import decode_files
from keras_dino.data.image_folder import decode_image
from keras_dino.data.image_folder import list_image_files
from keras_dino.data.tfds import from_tfds

_SOURCE_HELP = (
    "expected comma-separated .npz files, an image folder "
    "(root/<class>/<image>) or tfds:<name>:<split>"
)


def parse_source(source):
    """Splits a source string into its kind and location.

    Args:
        source: `"a.npz,b.npz"`, an image folder, or
            `"tfds:<name>:<split>"` (the split may hold colons, e.g.
            `"tfds:cifar10:train[:10%]"`).

    Returns:
        `("npz", [paths])`, `("folder", path)` or `("tfds", (name,
        split))`.
    """
    source = os.fspath(source)
    if source.startswith("tfds:"):
        parts = source.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(
                f"TFDS sources are 'tfds:<name>:<split>'; got {source!r}."
            )
        return "tfds", (parts[1], parts[2])
    if os.path.isdir(source):
        return "folder", source
    paths = [p for p in source.split(",") if p]
    for path in paths:
        if not path.endswith(".npz") or not os.path.isfile(path):
            raise ValueError(
                f"Unknown data source {path!r}: {_SOURCE_HELP}. (No such "
                ".npz file or folder.)"
            )
    if not paths:
        raise ValueError(f"Empty data source: {_SOURCE_HELP}.")
    return "npz", paths


def _balanced(labels, max_examples):
    """Indices of at most `max_examples` items, as even per class as can be.

    Each class keeps its first items (in file order); the order of the kept
    items is the input order.
    """
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    chosen = np.lexsort((labels, rank))[:max_examples]
    return np.sort(chosen)


def _folder_dataset(root, transform, batch_size, max_examples):
    paths, labels, _ = list_image_files(root)
    if max_examples is not None:
        keep = _balanced(labels, max_examples)
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths), tf.constant(labels, tf.int64))
    )
    dataset = pipeline.seeded(dataset, 0, False, None, None, None)
    dataset = decode_files(dataset, BadFileReport())
    return pipeline.augment_and_batch(
        dataset,
        transform,
        batch_size,
        with_labels=True,
        drop_remainder=False,
        num_parallel_calls=pipeline.AUTOTUNE,
        deterministic=True,
    )


def _dataset(source, transform, batch_size, max_examples):
    options = {
        "batch_size": batch_size,
        "with_labels": True,
        "shuffle": False,
        "drop_remainder": False,
    }
    if isinstance(source, (tuple, list)) and len(source) == 2:
        images, labels = source
        if max_examples is not None:
            images, labels = images[:max_examples], labels[:max_examples]
        return from_arrays(images, labels, transform, **options)
    kind, where = parse_source(source)
    if kind == "npz":
        images, labels = load_npz(where, max_examples=max_examples)
        return from_arrays(images, labels, transform, **options)
    if kind == "folder":
        return _folder_dataset(where, transform, batch_size, max_examples)
    name, split = where
    dataset = from_tfds(name, transform, split=split, **options)
    if max_examples is not None:
        dataset = dataset.unbatch().take(max_examples).batch(batch_size)
    return dataset


def _check_max_examples(max_examples):
    if max_examples is not None and (
        not isinstance(max_examples, (int, np.integer)) or max_examples < 1
    ):
        raise ValueError(
            "`max_examples` must be a positive int or None. Received: "
            f"{max_examples!r}"
        )


def labeled_dataset(
    source,
    image_size,
    batch_size=64,
    crop_fraction=0.875,
    max_examples=None,
):
    """Labelled images through the reference evaluation transform.

    A batched, unshuffled `tf.data.Dataset` of `(images, labels)`: each
    image is resized (bicubic, antialiased) so that its shorter side is
    `image_size / crop_fraction`, centre-cropped to `image_size` and
    normalised with the ImageNet statistics (`CenterCropTransform`), ready
    for `keras_dino.evaluation.extract_features`. Nothing is held in
    memory beyond the arrays of `.npz` sources.

    Args:
        source: a source string (see `parse_source`), or an `(images,
            labels)` pair of arrays (uint8 `(N, H, W, C)` images).
        image_size: int, output side.
        batch_size: int.
        crop_fraction: float in (0, 1], `image_size / resize_size` (224 /
            256 in the reference; 1 keeps the whole shorter side).
        max_examples: optional int: the first rows of arrays and `.npz`
            files, the first files of each class of a folder (as even per
            class as possible), the first examples of a TFDS split.

    Returns:
        A `tf.data.Dataset` of float32 `(batch, image_size, image_size, 3)`
        images and int64 labels (-1 where the source has none).

    Example:
    >>> ds = labeled_dataset("imagenet/val", 224, batch_size=256)
    >>> features, labels = extract_features(backbone, ds)
    """
    _check_max_examples(max_examples)
    transform = CenterCropTransform(image_size, crop_fraction=crop_fraction)
    return _dataset(source, transform, batch_size, max_examples)


def load_labeled_images(source, image_size=None, max_examples=None):
    """Labelled images of a source string, in memory, as uint8 arrays.

    `.npz` images are returned as stored. Folder and TFDS images, which
    differ in size, have their shorter side resized to `image_size`
    (bicubic, antialiased) and the centre square kept; without
    `image_size`, all images of a folder must have the same size.

    Args:
        source: a source string (see `parse_source`).
        image_size: optional int, the side of folder / TFDS images.
        max_examples: optional int, as in `labeled_dataset`.

    Returns:
        `(images, labels)`: uint8 `(N, H, W, 3)` and int64 `(N,)` (-1
        where the source has no labels).

    Example:
    >>> x, y = load_labeled_images("cifar10_val.npz", max_examples=500)
    """
    _check_max_examples(max_examples)
    kind, where = parse_source(source)
    if kind == "npz":
        return load_npz(where, max_examples=max_examples)
    if image_size is None:
        if kind == "tfds":
            raise ValueError("TFDS sources need `image_size`.")
        transform = _as_float
    else:
        transform = CenterCropTransform(
            image_size, resize_size=image_size, mean=(0, 0, 0), std=(1, 1, 1)
        )
    images, labels = [], []
    try:
        dataset = _dataset(source, transform, 64, max_examples)
        for batch, label in dataset.as_numpy_iterator():
            images.append(batch)
            labels.append(label)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"The images of {source!r} differ in size; pass `image_size`. "
            f"({error.message.splitlines()[0]})"
        ) from None
    if not images:
        raise ValueError(f"No image could be read from {source!r}.")
    images = np.concatenate(images)
    images = np.round(images * 255.0).clip(0, 255).astype("uint8")
    return images, np.concatenate(labels).astype("int64")


def _as_float(image, seed=None):
    del seed
    return tf.image.convert_image_dtype(image, tf.float32)


def load_image(path, image_size=None):
    """One image file as a uint8 RGB array, optionally resized.

    JPEG, PNG, BMP, GIF (first frame) and WebP; grayscale, palette and
    RGBA become RGB, and 16-bit PNGs are scaled to 8 bits.

    Args:
        path: image file.
        image_size: optional int or `(height, width)`; the image is
            resized to it (bicubic, antialiased), not cropped.

    Returns:
        `(height, width, 3)` uint8 array.
    """
    image = decode_image(tf.io.read_file(os.fspath(path)))
    if image_size is not None:
        size = (
            (image_size, image_size)
            if isinstance(image_size, int)
            else tuple(image_size)
        )
        image = tf.image.resize(image, size, "bicubic", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image.numpy()
