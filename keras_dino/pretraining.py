"""Build, train, checkpoint and resume DINO from a configuration dict.

The pretraining recipe is a thin wrapper around these functions; they work
the same from Python. Configurations use the reference's flag names (see
`keras_dino.configs`).
"""

import inspect
import json
import os
import shutil
import tempfile

import keras

from keras_dino.checkpointing import EpochCheckpoint
from keras_dino.checkpointing import clean_partial_files
from keras_dino.checkpointing import latest_checkpoint
from keras_dino.checkpointing import read_latest
from keras_dino.checkpointing import repair_history
from keras_dino.configs import ADDED_KEYS
from keras_dino.configs import ARCHS
from keras_dino.models.dino import DINO
from keras_dino.models.resnet_backbone import RESNET_VARIANTS
from keras_dino.models.resnet_backbone import ResNetBackbone
from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.schedules import DINOSchedule
from keras_dino.utils import distribution as distribution_lib

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
OPTIMIZERS = ("adamw", "sgd", "lars")
RUN_CONFIG = "config.json"


def _cpu_has_bfloat16_units():
    """Whether /proc/cpuinfo lists AMX or AVX-512 bfloat16 instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype_policy(name):
    """The Keras dtype policy name of a configuration's `dtype_policy`.

    `"auto"` is `"mixed_bfloat16"` where the CPU has bfloat16 matrix
    instructions (AMX or AVX-512 BF16, where a bfloat16 matmul runs about
    6x faster than float32), else `"float32"`. Mixed precision computes
    the backbones in bfloat16 with float32 weights; the heads, the loss,
    the center and the teacher EMA stay in float32, as the reference's
    `--use_fp16` keeps its loss and weights in float32.
    `"mixed_float16"` (the reference's `--use_fp16` on GPUs) adds dynamic
    loss scaling: `DINO.compile` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer`, which skips a step with
    non-finite gradients and lowers the scale, as PyTorch's GradScaler.
    """
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"Unknown dtype_policy {name!r}; choose one of {DTYPE_POLICIES}."
        )
    if name == "auto":
        return "mixed_bfloat16" if _cpu_has_bfloat16_units() else "float32"
    return name


def build_backbone(config):
    """The student backbone of a configuration: a ViT or a ResNet."""
    dtype = resolve_dtype_policy(config.get("dtype_policy", "float32"))
    if config["arch"] in RESNET_VARIANTS:
        return ResNetBackbone.from_variant(config["arch"], dtype=dtype)
    if config["arch"] not in ARCHS:
        raise ValueError(
            f"Unknown arch {config['arch']!r}; choose one of "
            f"{sorted(ARCHS) + sorted(RESNET_VARIANTS)}."
        )
    arch = dict(ARCHS[config["arch"]])
    # depth / embed_dim / num_heads / mlp_ratio override the named arch.
    for key, name, cast in (
        ("depth", "num_layers", int),
        ("embed_dim", "hidden_dim", int),
        ("num_heads", "num_heads", int),
        ("mlp_ratio", "mlp_ratio", float),
    ):
        if config.get(key):
            arch[name] = cast(config[key])
    return ViTBackbone(
        image_size=config["image_size"],
        patch_size=config["patch_size"],
        drop_path_rate=config["drop_path_rate"],
        seed=config.get("seed"),
        dtype=dtype,
        **arch,
    )


AUGMENT_ON = ("host", "device")


def _augment_on(config):
    where = config.get("augment_on", "host")
    if where not in AUGMENT_ON:
        raise ValueError(
            f"augment_on must be one of {AUGMENT_ON}. Received: {where!r}"
        )
    return where


def build_dino(config):
    """An uncompiled `DINO` model of a configuration.

    With `augment_on="device"` it makes the crops in its training step
    (`DeviceMultiCropAugmentation` of `multi_crop_sampler(config)`).
    """
    augmentation = None
    if _augment_on(config) == "device":
        from keras_dino.layers.device_multi_crop import (
            DeviceMultiCropAugmentation,
        )

        augmentation = DeviceMultiCropAugmentation.from_sampler(
            multi_crop_sampler(config)
        )
    return DINO(
        build_backbone(config),
        out_dim=config["out_dim"],
        hidden_dim=config["head_hidden_dim"],
        bottleneck_dim=config["head_bottleneck_dim"],
        use_bn_in_head=config["use_bn_in_head"],
        norm_last_layer=config["norm_last_layer"],
        student_temperature=config["student_temp"],
        augmentation=augmentation,
        dtype=resolve_dtype_policy(config.get("dtype_policy", "float32")),
    )


def build_optimizer(config):
    """The reference's optimizer of a configuration (`optimizer` key).

    `adamw`: PyTorch's AdamW (`DINOAdamW`); `sgd`: PyTorch's SGD with
    momentum 0.9 (`DINOSGD`); `lars`: the reference's LARS. Each clips
    every variable's gradient at `clip_grad` (0 turns clipping off); the
    `DINOSchedule` sets learning rate and weight decay every iteration.
    """
    from keras_dino import optimizers

    name = config.get("optimizer", "adamw")
    clip = config["clip_grad"] or None
    if name == "adamw":
        return optimizers.DINOAdamW(clip_norm=clip)
    if name == "sgd":
        return optimizers.DINOSGD(momentum=0.9, clip_norm=clip)
    if name == "lars":
        return optimizers.LARS(clip_norm=clip)
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")


def build_schedule(config, steps_per_epoch):
    """The `DINOSchedule` of a configuration, as the reference builds it.

    Learning rate `lr * batch_size / 256` with `warmup_epochs` of linear
    warm-up then cosine to `min_lr`; weight decay cosine `weight_decay`
    -> `weight_decay_end`; teacher momentum cosine `momentum_teacher` ->
    1; teacher temperature `warmup_teacher_temp` -> `teacher_temp` over
    `warmup_teacher_temp_epochs`; `center_momentum`; the last layer frozen
    for `freeze_last_layer` epochs.
    """
    return DINOSchedule(
        steps_per_epoch=steps_per_epoch,
        epochs=config["epochs"],
        learning_rate=config["lr"] * config["batch_size"] / 256.0,
        min_learning_rate=config["min_lr"],
        warmup_epochs=config["warmup_epochs"],
        weight_decay=config["weight_decay"],
        weight_decay_end=config["weight_decay_end"],
        teacher_momentum=config["momentum_teacher"],
        teacher_momentum_end=1.0,
        teacher_temperature=config["teacher_temp"],
        warmup_teacher_temperature=config["warmup_teacher_temp"],
        warmup_teacher_temperature_epochs=config["warmup_teacher_temp_epochs"],
        center_momentum=config["center_momentum"],
        freeze_last_layer_epochs=config["freeze_last_layer"],
    )


def _crop_arguments(config):
    return dict(
        global_crop_size=config["image_size"],
        local_crop_size=config["local_crop_size"],
        num_local_crops=config["local_crops_number"],
        global_crops_scale=tuple(config["global_crops_scale"]),
        local_crops_scale=tuple(config["local_crops_scale"]),
        blur_sigma=tuple(config["blur_sigma"]),
        color_jitter_prob=config.get("color_jitter_prob", 0.8),
        grayscale_prob=config.get("grayscale_prob", 0.2),
        seed=config["seed"],
    )


def multi_crop_augmentation(config):
    """The `keras_dino.data.MultiCropAugmentation` of a configuration."""
    from keras_dino.data.multi_crop import MultiCropAugmentation

    return MultiCropAugmentation(**_crop_arguments(config))


def multi_crop_sampler(config):
    """The `keras_dino.numpy_data.MultiCropSampler` of a configuration:
    the same crop distributions, for the device augmentation."""
    from keras_dino.numpy_data.multi_crop_sampler import MultiCropSampler

    return MultiCropSampler(**_crop_arguments(config))


class ReaderStream:
    """The device-augmentation input of a run: an `ImageFolderDataset`.

    Its batches are images and crop parameters (the model makes the crops
    in its step); batch `i` of epoch `e` depends only on `(seed, e, i)`,
    so a run resumed at epoch `e` reads what an uninterrupted run would
    have read next.

    Args:
        reader: a `keras_dino.numpy_data.ImageFolderDataset`.
    """

    def __init__(self, reader):
        self.reader = reader
        self.bad_file_report = reader.bad_file_report

    # Each worker can read its own share (`ImageFolderDataset.sharded`).
    shardable = True

    def dataset(
        self,
        steps_per_epoch,
        initial_epoch=0,
        num_shards=None,
        shard_index=None,
    ):
        """The reader (or its shard `shard_index` of `num_shards`), set to
        start at `initial_epoch`."""
        reader = self.reader
        if num_shards is not None:
            reader = reader.sharded(num_shards, shard_index)
        if int(steps_per_epoch) != len(reader):
            raise ValueError(
                f"The image-folder reader has {len(reader)} batches "
                f"per epoch but the run takes {steps_per_epoch} steps per "
                "epoch; with augment_on='device' leave steps_per_epoch "
                "unset (or equal to the reader's batches per epoch)."
            )
        reader.set_epoch(int(initial_epoch))
        return reader


def device_input(config, image_folder, workers=None, bad_file_report=None):
    """A `ReaderStream` of an image folder for `augment_on="device"`.

    Args:
        config: the run's configuration (`batch_size`, `canvas_size`, the
            crop values and `seed`).
        image_folder: `root/<class>/<image>` or a flat folder.
        workers: threads decoding in parallel (default: the CPU count,
            at most 8).
        bad_file_report: optional `keras_dino.numpy_data.BadFileReport`.

    Returns:
        `(stream, num_images)`.
    """
    from keras_dino.numpy_data import BadFileReport
    from keras_dino.numpy_data import ImageFolderDataset

    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    reader = ImageFolderDataset(
        image_folder,
        multi_crop_sampler(config),
        config["batch_size"],
        canvas_size=int(config["canvas_size"]),
        seed=config["seed"],
        bad_file_report=bad_file_report or BadFileReport(),
        workers=workers,
    )
    return ReaderStream(reader), len(reader.paths)


class EpochStream:
    """A multi-crop input stream whose epoch `e` depends only on `(seed, e)`.

    Epoch `e` shuffles and augments with seeds derived from `seed` and `e`,
    so a run resumed at epoch `e` sees exactly the data that an
    uninterrupted run would have seen next (not the first epoch's again).

    A stream whose `make_epoch` also takes `num_shards` and `shard_index`
    is shardable: with several workers `pretrain` has each worker read
    and augment only its share (batches `i, i + n, ...` of the unsharded
    stream, of `batch_size / n` images each; see
    `keras_dino.data.pipeline.seeded`). Otherwise each worker makes every
    global batch and keeps its slice.

    Args:
        make_epoch: callable `seed -> tf.data.Dataset` of one epoch of
            batches; `seed` is an int64 scalar tensor. Optionally
            `(seed, num_shards=None, shard_index=None)`.
        seed: int, the run's seed.
    """

    def __init__(self, make_epoch, seed=0):
        self.make_epoch = make_epoch
        self.seed = int(seed or 0)
        # A `BadFileReport` that `pretrain` adds to the callbacks.
        self.bad_file_report = None

    @property
    def shardable(self):
        """Whether `make_epoch` takes `num_shards` and `shard_index`."""
        parameters = inspect.signature(self.make_epoch).parameters
        return "num_shards" in parameters and "shard_index" in parameters

    def dataset(
        self,
        steps_per_epoch,
        initial_epoch=0,
        num_shards=None,
        shard_index=None,
    ):
        """Infinite dataset: `steps_per_epoch` batches per epoch, from
        `initial_epoch` on; with `num_shards`, shard `shard_index`'s
        batches only (a shardable stream)."""
        import tensorflow as tf

        shards = {}
        if num_shards is not None:
            if not self.shardable:
                raise ValueError(
                    "This stream's `make_epoch` takes no `num_shards` and "
                    "`shard_index` arguments, so it cannot be sharded."
                )
            shards = {"num_shards": num_shards, "shard_index": shard_index}
        steps = int(steps_per_epoch)
        seed = self.seed

        def one_epoch(epoch):
            # The epoch's ops get explicit seeds; without a graph-level seed
            # TensorFlow takes them as they are (with a global seed of 0 it
            # would compare the tensor seed with 0 in Python and fail).
            tf.compat.v1.get_default_graph().seed = None
            epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + epoch
            return self.make_epoch(epoch_seed, **shards).repeat().take(steps)

        return tf.data.Dataset.range(int(initial_epoch), 1 << 40).flat_map(
            one_epoch
        )


def _shard_batch_size(batch_size, num_shards):
    """The batch of one of `num_shards` workers."""
    if num_shards is None:
        return batch_size
    if batch_size % num_shards:
        raise ValueError(
            f"The batch size {batch_size} does not split evenly between "
            f"{num_shards} workers; give a multiple of {num_shards}."
        )
    return batch_size // num_shards


def pretraining_dataset(
    augmentation,
    batch_size,
    *,
    image_folder=None,
    tfds_name=None,
    tfds_data_dir=None,
    tfds_split="train",
    npz_paths=None,
    max_images=None,
    seed=0,
    bad_file_report=None,
):
    """A multi-crop `EpochStream` from one source, and its image count.

    Exactly one of `image_folder`, `tfds_name` and `npz_paths` is given.
    For an image folder, `stream.bad_file_report` (`bad_file_report`, or
    a new `BadFileReport`) records the skipped files and `pretrain` lists
    them at the end of each epoch; a folder where no file decodes raises
    a `ValueError` naming it and the number of undecodable files.
    `pretrain` turns the stream into a dataset that starts at the run's
    next epoch; `stream.dataset(steps_per_epoch)` gives one for `fit`.

    Returns:
        `(stream, num_images)`.
    """
    from keras_dino import data

    given = [image_folder, tfds_name, npz_paths]
    if sum(g is not None for g in given) != 1:
        raise ValueError(
            "Give exactly one of image_folder, tfds_name or npz_paths."
        )
    if npz_paths is not None:
        images, labels = data.load_npz(npz_paths)
        if max_images:
            images, labels = images[:max_images], labels[:max_images]
        num_images = len(images)

        def make_epoch(epoch_seed, num_shards=None, shard_index=None):
            return data.from_arrays(
                images,
                labels,
                augmentation,
                batch_size=_shard_batch_size(batch_size, num_shards),
                seed=epoch_seed,
                num_shards=num_shards,
                shard_index=shard_index,
            )

    elif image_folder is not None:
        from keras_dino.data.image_folder import check_some_image_decodes

        # Skipped files are listed at the end of each epoch (`pretrain`
        # adds the stream's report to the callbacks); a folder where
        # nothing decodes is refused here, before any training.
        if bad_file_report is None:
            bad_file_report = data.BadFileReport()
        files = data.list_image_files(image_folder, bad_file_report)[0]
        check_some_image_decodes(image_folder, files, bad_file_report)
        num_images = (
            len(files) if not max_images else min(len(files), max_images)
        )

        def make_epoch(epoch_seed, num_shards=None, shard_index=None):
            dataset = data.from_image_folder(
                image_folder,
                augmentation,
                batch_size=_shard_batch_size(batch_size, num_shards),
                seed=epoch_seed,
                bad_file_report=bad_file_report,
                num_shards=num_shards,
                shard_index=shard_index,
            )
            if max_images:
                dataset = dataset.take(max_images // batch_size)
            return dataset

    else:
        probe = data.from_tfds(
            tfds_name,
            augmentation,
            split=tfds_split,
            data_dir=tfds_data_dir,
            batch_size=batch_size,
            seed=seed,
        )
        num_images = int(probe.cardinality()) * batch_size
        if num_images <= 0:
            raise ValueError(
                f"Cannot tell the size of TFDS {tfds_name!r}; give "
                "steps_per_epoch explicitly."
            )

        def make_epoch(epoch_seed, num_shards=None, shard_index=None):
            dataset = data.from_tfds(
                tfds_name,
                augmentation,
                split=tfds_split,
                data_dir=tfds_data_dir,
                batch_size=_shard_batch_size(batch_size, num_shards),
                seed=epoch_seed,
                num_shards=num_shards,
                shard_index=shard_index,
            )
            if max_images:
                dataset = dataset.take(max_images // batch_size)
            return dataset

    stream = EpochStream(make_epoch, seed)
    stream.bad_file_report = bad_file_report
    return stream, num_images


def default_strategy():
    """A `MirroredStrategy` when TensorFlow sees several GPUs, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        print(f"Training on {len(gpus)} GPUs with MirroredStrategy.")
        return tf.distribute.MirroredStrategy()
    return None


def logging_callbacks(output_dir):
    """CSV history and, when TensorBoard is installed, TensorBoard logs."""
    result = [
        keras.callbacks.CSVLogger(
            os.path.join(output_dir, "history.csv"), append=True
        )
    ]
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        print(
            "TensorFlow or TensorBoard is not installed: no TensorBoard "
            "logs (pip install tensorflow tensorboard)."
        )
    else:
        result.append(
            keras.callbacks.TensorBoard(
                os.path.join(output_dir, "tensorboard"), update_freq=50
            )
        )
    return result


def _atomic_save(model, path):
    """`model.save(path)` through a synced temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp_{os.path.basename(path)}")
    model.save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(directory)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _comparable(config):
    """JSON form of a configuration (tuples become lists)."""
    return json.loads(json.dumps(config, sort_keys=True))


def check_run_config(output_dir, config, steps_per_epoch):
    """Stores a run's configuration, or checks a resumed run against it.

    The first call in `output_dir` writes `config.json` (the resolved
    configuration and `steps_per_epoch`). A later call, when the run
    resumes, refuses any difference: every value shapes the schedules,
    the model or the input stream, and applying a change half-way would
    give a run that no uninterrupted run matches.

    Raises:
        ValueError: naming each changed value, its stored and its new
            value, and how to start a new run.
    """
    current = _comparable(dict(config, steps_per_epoch=int(steps_per_epoch)))
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.exists(path):
        text = json.dumps(current, indent=2, sort_keys=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return current
    try:
        with open(path) as f:
            stored = {**ADDED_KEYS, **json.load(f)}
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} cannot be read ({e}); it records the run's "
            "configuration. Restore it, or start a new run in another "
            "--output_dir."
        ) from e
    changed = [
        f"  {key}: {stored.get(key, '<absent>')!r} -> "
        f"{current.get(key, '<absent>')!r}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key) != current.get(key)
    ]
    if changed:
        raise ValueError(
            f"{output_dir} holds a run started with another configuration; "
            "resuming it with these changes would not match any "
            "uninterrupted run:\n"
            + "\n".join(changed)
            + f"\nRerun with the stored values ({path}) to resume, or give "
            "a new --output_dir to start a new run with the new values."
        )
    return stored


def pretrain(
    config,
    dataset,
    steps_per_epoch,
    output_dir,
    extra_callbacks=(),
    verbose="auto",
    strategy=None,
    stop_after_epochs=None,
):
    """Trains DINO, checkpointing every epoch and resuming if possible.

    A new run stores its configuration in `output_dir/config.json`. When
    `output_dir/checkpoints` holds a complete checkpoint, the run resumes
    from it: the model (weights, teacher, center, iteration counter,
    optimizer state and schedule) is loaded, the configuration must equal
    the stored one (`check_run_config` names every difference), and the
    input stream starts at the next epoch. The teacher backbone is saved
    (atomically) before training as `output_dir/initial_backbone.keras`
    (random weights) and at the end as `output_dir/teacher_backbone.keras`.
    No checkpoint is written after a step with a non-finite loss or weight
    (`NonFiniteLossGuard`), so a resume starts from the last finite one.

    Args:
        config: a configuration dict (`keras_dino.configs.get_config`).
        dataset: an `EpochStream` (from `pretraining_dataset`), a
            `ReaderStream` (from `device_input`, for a configuration with
            `augment_on="device"`), or an
            infinite multi-crop `tf.data.Dataset` used as it is (a resumed
            run then does not see the data of its next epoch).
        steps_per_epoch: int, iterations per epoch.
        output_dir: folder for checkpoints, logs and the final backbone.
        extra_callbacks: callbacks run before the checkpoint and loggers
            (e.g. a `KNNMonitor`, which adds `knn_top1` to the logs).
        verbose: passed to `fit`.
        strategy: optional data-parallel setting from
            `keras_dino.utils.distribution.make_distribution`: a
            `tf.distribute.Strategy` (the model is built in its scope) or
            a `keras.distribution.Distribution` (JAX; current while the
            model is built and trained). With several workers only the
            chief writes to `output_dir`, which all workers must share;
            they resume from the same checkpoint, and each global batch
            of `dataset` is split between them.
        stop_after_epochs: optional int; stop once this many epochs of the
            schedule are done (e.g. a job with a time limit), leaving a
            checkpoint to resume from. The schedules still span
            `config["epochs"]`.

    Returns:
        `(model, history)`.
    """
    ckpt_dir = os.path.join(output_dir, "checkpoints")
    chief = distribution_lib.is_chief(strategy)
    latest = _prepare_output_dir(
        config, steps_per_epoch, output_dir, ckpt_dir, strategy, chief
    )
    # Saving a model reads its variables, which with several JAX processes
    # is a collective: every worker saves, the others in a scratch folder
    # that is removed at the end (as TensorFlow advises for
    # MultiWorkerMirroredStrategy), and only the chief in `output_dir`.
    save_dir = output_dir if chief else tempfile.mkdtemp(prefix="dino_")
    try:
        return _train(
            config,
            dataset,
            steps_per_epoch,
            save_dir,
            latest,
            extra_callbacks,
            verbose,
            strategy,
            chief,
            stop_after_epochs,
        )
    finally:
        if not chief:
            shutil.rmtree(save_dir, ignore_errors=True)


def _train(
    config,
    dataset,
    steps_per_epoch,
    save_dir,
    latest,
    extra_callbacks,
    verbose,
    strategy,
    chief,
    stop_after_epochs,
):
    """`pretrain` once the checkpoint to resume from is known."""
    jax_distribution = distribution_lib.is_keras_distribution(strategy)
    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        if latest is not None:
            path, initial_epoch = latest
            print(f"Resuming from {path} (epoch {initial_epoch} done).")
            model = keras.saving.load_model(path)
        else:
            initial_epoch = 0
            # As the reference's fix_random_seeds: the same seed gives the
            # same initial weights.
            if config.get("seed") is not None:
                keras.utils.set_random_seed(int(config["seed"]))
            model = build_dino(config)
            model.compile(
                optimizer=build_optimizer(config),
                schedule=build_schedule(config, steps_per_epoch),
            )
            # The starting point, for comparisons with random weights.
            _atomic_save(
                model.teacher_backbone,
                os.path.join(save_dir, "initial_backbone.keras"),
            )
    last_epoch = config["epochs"]
    if stop_after_epochs:
        last_epoch = min(last_epoch, int(stop_after_epochs))
    report_callbacks = []
    if isinstance(dataset, (EpochStream, ReaderStream)):
        if dataset.bad_file_report is not None:
            report_callbacks.append(dataset.bad_file_report)
    dataset, sharded = _worker_input(
        dataset, steps_per_epoch, initial_epoch, strategy, config["batch_size"]
    )
    writers = [EpochCheckpoint(os.path.join(save_dir, "checkpoints"))]
    if chief:
        writers += logging_callbacks(save_dir)
    # keras.distribution (JAX) must be current while `fit` runs.
    scope = strategy.scope() if jax_distribution else _null_scope()
    with scope, _keras_sharding_off(strategy if sharded else None):
        if initial_epoch >= last_epoch:
            print(f"{initial_epoch} of {config['epochs']} epochs are done.")
            history = None
        else:
            history = model.fit(
                dataset,
                epochs=last_epoch,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                callbacks=list(extra_callbacks) + writers + report_callbacks,
                verbose=verbose,
                shuffle=False,
            )
        if last_epoch == config["epochs"]:
            _atomic_save(
                model.teacher_backbone,
                os.path.join(save_dir, "teacher_backbone.keras"),
            )
    return model, history


def _prepare_output_dir(
    config, steps_per_epoch, output_dir, ckpt_dir, strategy, chief
):
    """Checks the run's folder; returns the checkpoint to resume from.

    The chief creates the folder, removes partial files, stores or checks
    `config.json` and repairs `history.csv`; the other workers then read
    the same folder (a shared file system) without writing to it. All
    workers must resume from the same epoch.
    """
    latest = None
    if chief:
        os.makedirs(output_dir, exist_ok=True)
        # Partial files of a killed run (never read; see
        # clean_partial_files).
        clean_partial_files(output_dir)
        clean_partial_files(ckpt_dir)
        check_run_config(output_dir, config, steps_per_epoch)
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None:
            # history.csv gets the row of the checkpoint's epoch back if a
            # kill came before the CSV write, and loses rows of later
            # epochs.
            record = read_latest(ckpt_dir)
            logs = record.get("logs") if record["epoch"] == latest[1] else None
            repair_history(
                os.path.join(output_dir, "history.csv"), latest[1], logs
            )
    workers = distribution_lib.num_workers(strategy)
    if workers == 1:
        return latest
    # A barrier: the chief has prepared the folder before the others read.
    distribution_lib.gather_from_workers(strategy, 0)
    if not chief:
        if os.path.exists(os.path.join(output_dir, RUN_CONFIG)):
            check_run_config(output_dir, config, steps_per_epoch)
        if os.path.isdir(ckpt_dir):
            latest = latest_checkpoint(ckpt_dir)
    epoch = 0 if latest is None else latest[1]
    epochs = distribution_lib.gather_from_workers(strategy, epoch)
    if len(set(epochs)) != 1:
        raise ValueError(
            f"The {workers} workers found different checkpoints in "
            f"{ckpt_dir} (epochs done per worker: {epochs}). Every worker "
            "must see the chief's --output_dir: put it on a file system "
            "that all hosts share."
        )
    return latest


def _worker_input(stream, steps_per_epoch, initial_epoch, strategy, batch):
    """`fit`'s input on this worker: its share of every global batch.

    A shardable stream (`EpochStream` of the readers, `ReaderStream`)
    reads, decodes and augments only this worker's share: shard `i` of
    `n` is batches `i, i + n, ...` of the stream at `batch / n` images,
    so the workers' batches of a step are together the one-worker global
    batch, in worker order. Keras and `tf.distribute` then must not shard
    again (`_keras_sharding_off`; a `DistributedDatasetsFromFunction`).
    Any other input is split after it is made (`_shard_by_batch_slices`).

    Returns:
        `(dataset, sharded)`: `sharded` is true for a worker's own share.
    """
    workers = distribution_lib.num_workers(strategy)
    stream_types = (EpochStream, ReaderStream)
    if not isinstance(stream, stream_types):
        return _shard_by_batch_slices(stream, strategy), False
    if workers == 1 or not stream.shardable:
        dataset = stream.dataset(steps_per_epoch, initial_epoch)
        return _shard_by_batch_slices(dataset, strategy), False
    _shard_batch_size(batch, workers)
    if not distribution_lib.is_tf_strategy(strategy):
        dataset = stream.dataset(
            steps_per_epoch,
            initial_epoch,
            num_shards=workers,
            shard_index=distribution_lib.worker_index(strategy),
        )
        return dataset, True
    if isinstance(stream, ReaderStream):
        raise ValueError(
            "The device augmentation's reader (augment_on='device') cannot "
            "feed a tf.distribute strategy with several workers; use the "
            "JAX backend (keras.distribution), or augment_on='host'."
        )
    replicas = strategy.num_replicas_in_sync
    per_replica = _shard_batch_size(batch, replicas)

    def per_worker(context):
        dataset = stream.dataset(
            steps_per_epoch,
            initial_epoch,
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
        )
        if replicas != context.num_input_pipelines:
            # The worker's batch, split between its local replicas.
            dataset = dataset.rebatch(per_replica)
        return dataset

    return strategy.distribute_datasets_from_function(per_worker), True


class _keras_sharding_off:
    """Turns off keras.distribution's own sharding of already sharded input.

    JAX's `DataParallel` slices each process's share out of the dataset it
    is given unless `auto_shard_dataset` is false; it is restored on exit.
    """

    def __init__(self, strategy):
        self.distribution = None
        if distribution_lib.is_keras_distribution(strategy):
            self.distribution = strategy

    def __enter__(self):
        if self.distribution is not None:
            self.saved = self.distribution.auto_shard_dataset
            self.distribution.auto_shard_dataset = False
        return self

    def __exit__(self, *exc):
        if self.distribution is not None:
            self.distribution.auto_shard_dataset = self.saved
        return False


def _shard_by_batch_slices(dataset, strategy):
    """Makes `MultiWorkerMirroredStrategy` split each global batch.

    Each worker then trains on its own slice of every global batch (no
    two workers see the same images), and the workers' steps together
    equal a one-worker step on the global batch. The default (`AUTO`)
    policy could shard by input file instead, which breaks that equality
    and fails with fewer files than workers.
    """
    if not distribution_lib.is_tf_strategy(strategy):
        return dataset
    if distribution_lib.num_workers(strategy) == 1:
        return dataset
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def steps_for(num_images, batch_size):
    """Full batches per epoch (the last partial batch is dropped)."""
    steps = num_images // batch_size
    if steps < 1:
        raise ValueError(
            f"{num_images} images are fewer than one batch of {batch_size}."
        )
    return steps


__all__ = [
    "EpochStream",
    "ReaderStream",
    "device_input",
    "multi_crop_sampler",
    "build_backbone",
    "build_dino",
    "build_optimizer",
    "build_schedule",
    "check_run_config",
    "default_strategy",
    "pretraining_dataset",
    "multi_crop_augmentation",
    "pretrain",
    "steps_for",
]
