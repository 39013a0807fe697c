"""The `tf.data` steps shared by all readers: shuffle, seed, shard, augment,
batch, prefetch."""

import tensorflow as tf

from keras_dino.data.multi_crop import MultiCropAugmentation

AUTOTUNE = tf.data.AUTOTUNE


def check_batch_size(batch_size):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: {batch_size!r}"
        )


def default_augmentation(augmentation, seed):
    """`augmentation`, or DINO's default multi-crop if it is `None`."""
    if augmentation is None:
        return MultiCropAugmentation(seed=seed)
    if not callable(augmentation):
        raise ValueError(
            "`augmentation` must be a callable `(image, seed) -> crops`, "
            "such as `MultiCropAugmentation` or `CenterCropTransform`. "
            f"Received: {augmentation!r}"
        )
    return augmentation


def check_sharding(num_shards, shard_index):
    if (num_shards is None) != (shard_index is None):
        raise ValueError(
            "Give both `num_shards` and `shard_index`, or neither. Received: "
            f"num_shards={num_shards}, shard_index={shard_index}"
        )
    if num_shards is not None and not 0 <= shard_index < num_shards:
        raise ValueError(
            "`shard_index` must be in [0, num_shards). Received: "
            f"num_shards={num_shards}, shard_index={shard_index}"
        )


def seeded(
    dataset,
    seed,
    shuffle,
    shuffle_buffer_size,
    num_shards,
    shard_index,
    batch_size=None,
):
    """Shuffles, pairs every element with a random int64 seed, and shards.

    Sharding comes after the shuffle and the seeds, and before any
    decoding or augmentation: shard `i` of `n` keeps the runs of
    `batch_size` elements `i, i + n, i + 2n, ...` of the unsharded stream.
    So, batched by `batch_size`, shard `i` yields batches `i, i + n, ...`
    of the unsharded dataset with the same seed (the same images, with
    the same augmentation seeds), the shards are disjoint, and the `n`
    shards' batches of one step together are the unsharded stream's
    batch of `n * batch_size`. Each shard only shuffles the sources (file
    paths, array rows), which is cheap; it decodes and augments its own
    images only.

    Args:
        dataset: dataset of `(source, label)` pairs, `source` being an image
            or a file path.
        seed: int or `None`.
        shuffle: whether to shuffle (reshuffled every epoch).
        shuffle_buffer_size: shuffle buffer size.
        num_shards: optional number of shards (e.g. workers).
        shard_index: index of the shard to keep.
        batch_size: the batch size of the shard (needed with
            `num_shards`).

    Returns:
        Dataset of `(source, label, element_seed)`. The element seeds are
        deterministic given `seed` and change every epoch.
    """
    if shuffle:
        dataset = dataset.shuffle(
            shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True
        )
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(dataset, seeds).map(
        lambda pair, s: (pair[0], pair[1], s)
    )
    if num_shards is not None:
        dataset = shard_batches(dataset, batch_size, num_shards, shard_index)
    return dataset


def shard_batches(dataset, batch_size, num_shards, shard_index):
    """Keeps the runs of `batch_size` elements `shard_index + k * num_shards`.

    Batched by `batch_size`, the result is batches `shard_index,
    shard_index + num_shards, ...` of `dataset` batched the same way; a
    last incomplete run is dropped.
    """
    check_batch_size(batch_size)
    check_sharding(num_shards, shard_index)
    return (
        dataset.batch(batch_size, drop_remainder=True)
        .shard(num_shards, shard_index)
        .unbatch()
    )


def augment_and_batch(
    dataset,
    augmentation,
    batch_size,
    with_labels,
    drop_remainder,
    num_parallel_calls,
    deterministic,
):
    """Maps `augmentation` over `(image, label, seed)`, batches, prefetches.

    Returns:
        Batched dataset of crops (a tuple of tensors for multi-crop, or one
        tensor), or of `(crops, labels)` when `with_labels` is true.
    """

    @tf.autograph.experimental.do_not_convert
    def augment(image, label, seed):
        crops = augmentation(image, seed)
        if isinstance(crops, list):
            crops = tuple(crops)
        return (crops, label) if with_labels else crops

    dataset = dataset.map(
        augment,
        num_parallel_calls=num_parallel_calls,
        deterministic=deterministic,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    if deterministic is not None:
        options.deterministic = deterministic
    return dataset.with_options(options)


def resolve_deterministic(deterministic, seed):
    """Deterministic order by default when a seed is given."""
    if deterministic is None and seed is not None:
        return True
    return deterministic
