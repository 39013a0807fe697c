"""Reads a folder of image files: `root/<class>/<image>` or flat."""

import tensorflow as tf

from keras_dino.data import pipeline
from keras_dino.data.bad_file_report import BadFileReport
from keras_dino.numpy_data.image_files import IMAGE_EXTENSIONS  # noqa: F401
from keras_dino.numpy_data.image_files import list_image_files
from keras_dino.numpy_data.image_files import printable


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


def check_some_image_decodes(root, paths, bad_file_report=None):
    """Raises unless one of `paths` can be read and decoded.

    Files are tried in order until one decodes, so a usable folder costs
    one read; a folder where nothing decodes (every file corrupt, empty or
    not an image) costs a read of each file and is refused, instead of
    giving a dataset that yields no batch (a training run would "finish"
    after 0 steps). The files that fail are recorded in
    `bad_file_report`.

    Args:
        root: the folder, named in the error.
        paths: its listed image files.
        bad_file_report: optional `BadFileReport`.

    Raises:
        ValueError: naming `root` and the number of undecodable files.
    """
    failed = []
    with tf.init_scope():  # eager, even while a dataset function traces
        for path in paths:
            try:
                decode_image(tf.io.read_file(path))
                return
            except (tf.errors.OpError, ValueError) as e:
                message = getattr(e, "message", str(e)).splitlines()[0]
                failed.append(path)
                if bad_file_report is not None:
                    reason = f"cannot be decoded: {message}"
                    bad_file_report.record(path, reason)
    listed = ", ".join(printable(p) for p in failed[:5])
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    raise ValueError(
        f"None of the {len(failed)} image files in {root!r} can be read "
        f"and decoded ({listed}{more}): all {len(failed)} are corrupt, "
        "empty or not images. Check the folder (e.g. an unfinished copy "
        "or download) or give another one."
    )


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
    stopping the iteration and recorded in `bad_file_report`, as are the
    entries `list_image_files` skips (FIFOs, devices, broken links, names
    that are not UTF-8). A folder where no file decodes is refused with a
    `ValueError` (see `check_some_image_decodes`).

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
        num_shards: optional sharding (e.g. the number of workers): shard
            `i` yields batches `i, i + num_shards, ...` of the unsharded
            dataset with the same seed (without bad files), and reads,
            decodes and augments only its own files.
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
    paths, labels, _ = list_image_files(root, report)
    check_some_image_decodes(root, paths, report)
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
        batch_size,
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
