"""Build, train, checkpoint and resume DINO from a configuration dict.

The pretraining recipe is a thin wrapper around these functions; they work
the same from Python. Configurations use the reference's flag names (see
`keras_dino.configs`).
"""

import os

import keras

from keras_dino import callbacks as dino_callbacks
from keras_dino.checkpointing import EpochCheckpoint
from keras_dino.checkpointing import latest_checkpoint
from keras_dino.configs import ARCHS
from keras_dino.models.dino import DINO
from keras_dino.models.vit_backbone import ViTBackbone
from keras_dino.optimizers import dino_adamw

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "auto")


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
    """
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"Unknown dtype_policy {name!r}; choose one of {DTYPE_POLICIES}. "
            "(mixed_float16 needs loss scaling, which DINO does not wire "
            "in; use mixed_bfloat16.)"
        )
    if name == "auto":
        return "mixed_bfloat16" if _cpu_has_bfloat16_units() else "float32"
    return name


def build_backbone(config):
    """The student `ViTBackbone` of a configuration."""
    if config["arch"] not in ARCHS:
        raise ValueError(
            f"Unknown arch {config['arch']!r}; choose one of {sorted(ARCHS)}."
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
        dtype=resolve_dtype_policy(config.get("dtype_policy", "float32")),
        **arch,
    )


def build_dino(config):
    """An uncompiled `DINO` model of a configuration."""
    return DINO(
        build_backbone(config),
        out_dim=config["out_dim"],
        hidden_dim=config["head_hidden_dim"],
        bottleneck_dim=config["head_bottleneck_dim"],
        use_bn_in_head=config["use_bn_in_head"],
        norm_last_layer=config["norm_last_layer"],
        student_temperature=config["student_temp"],
        dtype=resolve_dtype_policy(config.get("dtype_policy", "float32")),
    )


def build_optimizer(config, steps_per_epoch):
    """The reference AdamW with the configuration's schedules."""
    if config.get("optimizer", "adamw") != "adamw":
        raise ValueError(
            f"Only optimizer='adamw' is implemented, got "
            f"{config['optimizer']!r}."
        )
    return dino_adamw(
        batch_size=config["batch_size"],
        steps_per_epoch=steps_per_epoch,
        epochs=config["epochs"],
        base_learning_rate=config["lr"],
        min_learning_rate=config["min_lr"],
        warmup_epochs=config["warmup_epochs"],
        weight_decay=config["weight_decay"],
        weight_decay_end=config["weight_decay_end"],
        clip_norm=config["clip_grad"] or None,
        freeze_last_layer_epochs=config["freeze_last_layer"],
    )


def schedule_callbacks(config):
    """The DINO schedule callbacks of a configuration."""
    return [
        dino_callbacks.TeacherMomentumSchedule(
            config["momentum_teacher"], epochs=config["epochs"]
        ),
        dino_callbacks.TeacherTemperatureSchedule(
            value=config["teacher_temp"],
            warmup_value=config["warmup_teacher_temp"],
            warmup_epochs=config["warmup_teacher_temp_epochs"],
            epochs=config["epochs"],
        ),
        dino_callbacks.CenterMomentum(config["center_momentum"]),
        dino_callbacks.FreezeLastLayer(config["freeze_last_layer"]),
    ]


def multi_crop_augmentation(config):
    """The `keras_dino.data.MultiCropAugmentation` of a configuration."""
    from keras_dino.data.multi_crop import MultiCropAugmentation

    return MultiCropAugmentation(
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
    """A repeated multi-crop dataset from one source, and its image count.

    Exactly one of `image_folder`, `tfds_name` and `npz_paths` is given.
    The dataset repeats forever, so `fit` needs `steps_per_epoch` (e.g.
    `steps_for(num_images, batch_size)`).

    Returns:
        `(dataset, num_images)`.
    """
    from keras_dino import data

    given = [image_folder, tfds_name, npz_paths]
    if sum(g is not None for g in given) != 1:
        raise ValueError(
            "Give exactly one of image_folder, tfds_name or npz_paths."
        )
    common = {"batch_size": batch_size, "seed": seed}
    if npz_paths is not None:
        images, labels = data.load_npz(npz_paths)
        if max_images:
            images, labels = images[:max_images], labels[:max_images]
        dataset = data.from_arrays(images, labels, augmentation, **common)
        num_images = len(images)
    elif image_folder is not None:
        files = data.list_image_files(image_folder)[0]
        num_images = (
            len(files) if not max_images else min(len(files), max_images)
        )
        dataset = data.from_image_folder(
            image_folder,
            augmentation,
            bad_file_report=bad_file_report,
            **common,
        )
    else:
        dataset = data.from_tfds(
            tfds_name,
            augmentation,
            split=tfds_split,
            data_dir=tfds_data_dir,
            **common,
        )
        num_images = int(dataset.cardinality()) * batch_size
        if num_images <= 0:
            raise ValueError(
                f"Cannot tell the size of TFDS {tfds_name!r}; give "
                "steps_per_epoch explicitly."
            )
    if max_images and npz_paths is None:
        dataset = dataset.take(max_images // batch_size)
    return dataset.repeat(), num_images


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

    When `output_dir/checkpoints` holds a complete checkpoint, the model
    (weights, teacher, center, optimizer state and iteration count) is
    loaded from it and training continues at the next epoch with the same
    schedules. The teacher backbone is saved before training as
    `output_dir/initial_backbone.keras` (random weights) and at the end as
    `output_dir/teacher_backbone.keras`.

    Args:
        config: a configuration dict (`keras_dino.configs.get_config`).
        dataset: an infinite (repeated) multi-crop dataset.
        steps_per_epoch: int, iterations per epoch.
        output_dir: folder for checkpoints, logs and the final backbone.
        extra_callbacks: callbacks run before the checkpoint and loggers
            (e.g. a `KNNMonitor`, which adds `knn_top1` to the logs).
        verbose: passed to `fit`.
        strategy: optional `tf.distribute.Strategy` to build the model in.
        stop_after_epochs: optional int; stop once this many epochs of the
            schedule are done (e.g. a job with a time limit), leaving a
            checkpoint to resume from. The schedules still span
            `config["epochs"]`.

    Returns:
        `(model, history)`.
    """
    os.makedirs(output_dir, exist_ok=True)
    ckpt_dir = os.path.join(output_dir, "checkpoints")
    latest = latest_checkpoint(ckpt_dir)
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
            model.compile(optimizer=build_optimizer(config, steps_per_epoch))
            # The starting point, for comparisons with random weights.
            model.teacher_backbone.save(
                os.path.join(output_dir, "initial_backbone.keras")
            )
    last_epoch = config["epochs"]
    if stop_after_epochs:
        last_epoch = min(last_epoch, int(stop_after_epochs))
    if initial_epoch >= last_epoch:
        print(f"{initial_epoch} of {config['epochs']} epochs are done.")
        history = None
    else:
        history = model.fit(
            dataset,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=schedule_callbacks(config)
            + list(extra_callbacks)
            + [EpochCheckpoint(ckpt_dir)]
            + logging_callbacks(output_dir),
            verbose=verbose,
            shuffle=False,
        )
    if last_epoch == config["epochs"]:
        model.teacher_backbone.save(
            os.path.join(output_dir, "teacher_backbone.keras")
        )
    return model, history


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
    "build_backbone",
    "build_dino",
    "build_optimizer",
    "default_strategy",
    "pretraining_dataset",
    "multi_crop_augmentation",
    "pretrain",
    "schedule_callbacks",
    "steps_for",
]
