"""Reads a folder of image files: `root/<class>/<image>` or flat."""

import os

import tensorflow as tf

from keras_dino.data import pipeline
from keras_dino.data.bad_file_report import BadFileReport

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder):
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        paths.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)
        )
    return paths


def list_image_files(root):
    """Lists the image files of a folder and their labels.

    With sub-folders (`root/<class>/.../<image>`, as torchvision's
    `ImageFolder`), classes are the sorted sub-folder names and labels their
    indices; image files directly in `root` are then ignored. Without
    sub-folders the folder is flat and every label is -1. Files are matched
    by extension (case-insensitive): .jpg, .jpeg, .png, .bmp, .gif.

    Args:
        root: path of the folder.

    Returns:
        Tuple `(paths, labels, class_names)`: lists of str, int and str.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(
            f"Image folder {root!r} does not exist or is not a directory."
        )
    classes = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    paths, labels = [], []
    class_names = []
    for name in classes:
        files = _walk_images(os.path.join(root, name))
        if files:
            labels.extend([len(class_names)] * len(files))
            class_names.append(name)
            paths.extend(files)
    if not paths:
        paths = [
            os.path.join(root, f)
            for f in sorted(os.listdir(root))
            if _is_image(f) and os.path.isfile(os.path.join(root, f))
        ]
        labels = [-1] * len(paths)
    if not paths:
        raise ValueError(
            f"No image file found in {root!r}. Expected `root/<class>/"
            f"<image>` or images directly in `root`, with one of the "
            f"extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    return paths, labels, class_names


def decode_image(contents):
    """Decodes JPEG/PNG/BMP/GIF bytes to a uint8 RGB `(H, W, 3)` image.

    Grayscale, palette and RGBA images become RGB (alpha is dropped, as
    PIL's `convert("RGB")` does); of an animated GIF the first frame is kept.
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _read_and_decode(path):
    return decode_image(tf.io.read_file(path))


def _decode_or_flag(path, label, seed):
    """A one-element dataset: the decoded image, or a flagged placeholder."""
    good = (
        tf.data.Dataset.from_tensors(path)
        .map(lambda p: (_read_and_decode(p), True))
        .ignore_errors()
    )
    bad = tf.data.Dataset.from_tensors((tf.zeros([1, 1, 3], tf.uint8), False))
    return (
        good.concatenate(bad)
        .take(1)
        .map(lambda image, ok: (image, label, seed, ok, path))
    )


def decode_files(dataset, report, num_parallel_calls=pipeline.AUTOTUNE):
    """Decodes `(path, label, seed)` elements, skipping unreadable files.

    Each file is read and decoded in its own small dataset whose errors are
    caught, so that a corrupt, empty or non-image file is skipped (and its
    path given to `report.record`) instead of stopping the iteration.

    Args:
        dataset: dataset of `(path, label, seed)`.
        report: a `BadFileReport`.
        num_parallel_calls: parallelism of the decoding.

    Returns:
        Dataset of `(image, label, seed)`, in the input order.
    """

    def record(path):
        report.record(path.numpy())
        return False

    def keep(image, label, seed, ok, path):
        return tf.cond(
            ok,
            lambda: tf.constant(True),
            lambda: tf.py_function(record, [path], tf.bool),
        )

    dataset = dataset.interleave(
        _decode_or_flag,
        cycle_length=16,
        block_length=1,
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    return dataset.filter(keep).map(
        lambda image, label, seed, ok, path: (image, label, seed)
    )


def from_image_folder(
    root,
    augmentation=None,
    batch_size=64,
    *,
    with_labels=False,
    shuffle=True,
    seed=None,
    bad_file_report=None,
    drop_remainder=True,
    shuffle_buffer_size=None,
    num_shards=None,
    shard_index=None,
    num_parallel_calls=pipeline.AUTOTUNE,
    deterministic=None,
):
    """A batched dataset of augmented images from a folder of image files.

    Files are listed with `list_image_files` (`root/<class>/<image>` or a
    flat folder), read and decoded in parallel (JPEG, PNG, BMP, GIF of any
    size; grayscale, palette and RGBA become RGB), augmented, batched and
    prefetched. Files that cannot be read or decoded are skipped without
    stopping the iteration and recorded in `bad_file_report`.

    Args:
        root: path of the folder.
        augmentation: callable `(image, seed) -> crops`, by default
            `MultiCropAugmentation(seed=seed)`; use `CenterCropTransform`
            for evaluation.
        batch_size: number of images per batch.
        with_labels: if true, elements are `(crops, labels)` (labels are
            class indices, -1 for a flat folder), else just `crops`.
        shuffle: whether to shuffle the files (again every epoch).
        seed: int seed of the shuffling and of the per-image augmentation
            seeds; with a seed, the dataset is deterministic.
        bad_file_report: a `BadFileReport` that records skipped files; pass
            it to `fit(callbacks=[...])` too to have them reported at the
            end of each epoch. By default skipped files are only logged.
        drop_remainder: whether to drop the last incomplete batch (true for
            training: `DINO.fit` needs static batch shapes; use false for
            evaluation).
        shuffle_buffer_size: defaults to the number of files (paths are
            small).
        num_shards: optional explicit sharding (e.g. the number of
            workers), applied to the file list before any decoding.
        shard_index: the shard to keep, in `[0, num_shards)`.
        num_parallel_calls: parallelism of decoding and augmentation.
        deterministic: keep the element order under parallel maps; by
            default true when `seed` is given.

    Returns:
        A `tf.data.Dataset` of tuples of batched float32 crops
        `(global_1, global_2, local_1, ..., local_N)` (or `(crops, labels)`
        with `with_labels=True`).

    Example:

    ```python
    report = BadFileReport()
    ds = from_image_folder(
        "imagenet/train", MultiCropAugmentation(seed=0), batch_size=64,
        seed=0, bad_file_report=report,
    )
    dino.fit(ds, epochs=100, callbacks=[report])
    ```
    """
    pipeline.check_batch_size(batch_size)
    pipeline.check_sharding(num_shards, shard_index)
    augmentation = pipeline.default_augmentation(augmentation, seed)
    report = bad_file_report if bad_file_report is not None else BadFileReport()
    paths, labels, _ = list_image_files(root)
    deterministic = pipeline.resolve_deterministic(deterministic, seed)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths), tf.constant(labels, tf.int64))
    )
    dataset = pipeline.seeded(
        dataset,
        seed,
        shuffle,
        shuffle_buffer_size or len(paths),
        num_shards,
        shard_index,
    )
    dataset = decode_files(dataset, report, num_parallel_calls)
    return pipeline.augment_and_batch(
        dataset,
        augmentation,
        batch_size,
        with_labels,
        drop_remainder,
        num_parallel_calls,
        deterministic,
    )
