"""Reader for TensorFlow Datasets (TFDS)."""

import tensorflow as tf

from keras_dino.data import pipeline


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "`from_tfds` needs the `tensorflow-datasets` package: "
            "`pip install tensorflow-datasets` (or "
            "`pip install keras-dino[data]`)."
        ) from error
    return tfds


def from_tfds(
    name,
    augmentation=None,
    batch_size=64,
    *,
    split="train",
    data_dir=None,
    download=False,
    image_key="image",
    label_key="label",
    with_labels=False,
    shuffle=True,
    seed=None,
    drop_remainder=True,
    shuffle_buffer_size=10_000,
    num_shards=None,
    shard_index=None,
    num_parallel_calls=pipeline.AUTOTUNE,
    deterministic=None,
):
    """A batched dataset of augmented images from a TFDS dataset.

    By default nothing is downloaded: the dataset must already be prepared
    in `data_dir` (`tfds.builder(name, data_dir=...).download_and_prepare()`
    once, where there is network access).

    Args:
        name: TFDS name, e.g. `"imagenette/320px-v2"` or `"cifar10"`.
        augmentation: callable `(image, seed) -> crops`, by default
            `MultiCropAugmentation(seed=seed)`.
        batch_size: number of images per batch.
        split: TFDS split, e.g. `"train"` or `"train[:10%]"`.
        data_dir: TFDS data directory (default: `~/tensorflow_datasets`).
        download: whether TFDS may download and prepare the dataset.
        image_key: feature holding the image.
        label_key: feature holding the label; -1 is used if it is missing.
        with_labels: if true, elements are `(crops, labels)`.
        shuffle: whether to shuffle (files and examples, every epoch).
        seed: int seed of the shuffling and of the augmentation.
        drop_remainder: whether to drop the last incomplete batch.
        shuffle_buffer_size: size of the example shuffle buffer.
        num_shards: optional sharding (e.g. the number of workers): shard
            `i` yields batches `i, i + num_shards, ...` of the unsharded
            dataset with the same seed, and augments only its own images
            (TFDS still reads and decodes every example on each shard).
        shard_index: the shard to keep, in `[0, num_shards)`.
        num_parallel_calls: parallelism of the augmentation.
        deterministic: keep the element order under parallel maps; by
            default true when `seed` is given.

    Returns:
        A `tf.data.Dataset` of tuples of batched float32 crops (or
        `(crops, labels)` with `with_labels=True`).
    """
    tfds = _import_tfds()
    pipeline.check_batch_size(batch_size)
    pipeline.check_sharding(num_shards, shard_index)
    augmentation = pipeline.default_augmentation(augmentation, seed)
    deterministic = pipeline.resolve_deterministic(deterministic, seed)
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    try:
        dataset = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            shuffle_files=shuffle,
            read_config=read_config,
        )
    except AssertionError as error:
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} "
            "and `download=False`. Prepare it once with network access, or "
            f"pass `download=True`. TFDS said: {error}"
        ) from error

    def select(example):
        if image_key not in example:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {image_key!r}; "
                f"features: {sorted(example)}. Set `image_key`."
            )
        image = example[image_key]
        label = example.get(label_key, tf.constant(-1, tf.int64))
        return image, tf.cast(label, tf.int64)

    dataset = dataset.map(select, num_parallel_calls=num_parallel_calls)
    dataset = pipeline.seeded(
        dataset,
        seed,
        shuffle,
        shuffle_buffer_size,
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
