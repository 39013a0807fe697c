"""DINO pretraining recipe (absl flags with the reference's names).

Examples:

    # The paper's ViT-S/16 on an image folder:
    python recipes/pretrain.py --config=imagenet_vits16 \
        --data_path=/data/imagenet/train --output_dir=runs/vits16

    # Small-compute CIFAR-10 recipe on the 5,000-image sample shipped in
    # recipes/data (any .npz with `images` works), with a k-NN curve:
    python recipes/pretrain.py --config=cifar10_vit_tiny \
        --npz=recipes/data/cifar10_demo_train.npz \
        --knn_npz=recipes/data/cifar10_demo_val.npz --output_dir=runs/cifar

    # The reference's ResNet-50 (SGD, BatchNorm in the head):
    python recipes/pretrain.py --config=imagenet_resnet50 \
        --data_path=/data/imagenet/train --output_dir=runs/rn50

Run it again with the same --output_dir to resume from the last epoch; the
run's configuration is stored in --output_dir/config.json and a resume
with other values is refused with the list of differences.

--distribution trains on several devices or hosts (TensorFlow, JAX); the
README's "Training on many devices / hosts" gives the launch commands.
--batch_size is the global batch, split between all devices.
"""

import os
import sys

from absl import app
from absl import flags

from keras_dino import configs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "config",
    "imagenet_vits16",
    sorted(configs.CONFIGS),
    "Named configuration; the flags below override it.",
)
flags.DEFINE_string("output_dir", "runs/dino", "Checkpoints, logs, model.")
flags.DEFINE_string("data_path", None, "Image folder (root/<class>/<img>).")
flags.DEFINE_string("tfds_name", None, "TensorFlow Datasets name.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (offline).")
flags.DEFINE_string("tfds_split", "train", "TFDS split.")
flags.DEFINE_list("npz", None, ".npz files with `images` (and `labels`).")
flags.DEFINE_integer("max_images", None, "Use at most this many images.")
flags.DEFINE_list(
    "knn_npz", None, ".npz file(s) for a k-NN curve: half memory, half query."
)
flags.DEFINE_integer("knn_images", 5000, "Images used by the k-NN curve.")
flags.DEFINE_integer(
    "steps_per_epoch", None, "Iterations per epoch (default: images // batch)."
)
flags.DEFINE_integer(
    "stop_after_epochs",
    None,
    "Stop after this many epochs of the schedule (resume later).",
)
flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress bar, 2 one line.")
flags.DEFINE_enum(
    "malloc",
    "auto",
    ["auto", "keep", "system"],
    "glibc malloc settings (process-wide): keep freed memory for reuse "
    "(keras_dino.utils.allocator.keep_freed_memory; fewer page faults, "
    "resident memory stays near its peak) or the system's defaults. auto: "
    "keep on the PyTorch backend (measured faster there), system on JAX "
    "and TensorFlow.",
)
flags.DEFINE_enum(
    "distribution",
    "auto",
    ["auto", "none", "mirrored", "multi_worker", "jax"],
    "Data parallelism: none (one device); mirrored (TensorFlow, the GPUs "
    "of this host); multi_worker (TensorFlow, the hosts of TF_CONFIG); jax "
    "(JAX, all devices, of all processes when KERAS_DISTRIBUTION_* are "
    "set); auto picks what the backend and the visible devices allow. "
    "PyTorch trains on one device. See the README, 'Training on many "
    "devices / hosts'.",
)

# Each override: (DEFINE function, enum values or [], help). The help names the
# unit; the effective default is the chosen --config's value, printed by
# the recipe at start.
_OVERRIDES = {
    "arch": (
        flags.DEFINE_string,
        [],
        "Backbone: vit_tiny, vit_small or vit_base with --patch_size (as "
        "the reference's --arch), a variant name such as ViT-S/16, or "
        "resnet50.",
    ),
    "patch_size": (flags.DEFINE_integer, [], "ViT patch size in pixels."),
    "depth": (flags.DEFINE_integer, [], "Number of transformer blocks."),
    "embed_dim": (flags.DEFINE_integer, [], "Token width (channels)."),
    "num_heads": (flags.DEFINE_integer, [], "Attention heads per block."),
    "mlp_ratio": (flags.DEFINE_float, [], "MLP width / token width."),
    "image_size": (flags.DEFINE_integer, [], "Global crop size in pixels."),
    "local_crop_size": (flags.DEFINE_integer, [], "Local crop size (px)."),
    "out_dim": (flags.DEFINE_integer, [], "Prototypes K of the DINO head."),
    "head_hidden_dim": (flags.DEFINE_integer, [], "Head MLP width."),
    "head_bottleneck_dim": (flags.DEFINE_integer, [], "Head bottleneck."),
    "norm_last_layer": (
        flags.DEFINE_bool,
        [],
        "Fix the weight-norm gain of the head's last layer at 1.",
    ),
    "use_bn_in_head": (
        flags.DEFINE_bool,
        [],
        "BatchNormalization in the head MLP.",
    ),
    "momentum_teacher": (
        flags.DEFINE_float,
        [],
        "Teacher EMA momentum at step 0 (cosine to 1 over the run).",
    ),
    "warmup_teacher_temp": (
        flags.DEFINE_float,
        [],
        "Teacher temperature at epoch 0.",
    ),
    "teacher_temp": (
        flags.DEFINE_float,
        [],
        "Teacher temperature after the warm-up.",
    ),
    "warmup_teacher_temp_epochs": (
        flags.DEFINE_integer,
        [],
        "Epochs of linear teacher-temperature warm-up.",
    ),
    "weight_decay": (flags.DEFINE_float, [], "Weight decay at step 0."),
    "weight_decay_end": (
        flags.DEFINE_float,
        [],
        "Weight decay the cosine tends to at the end of the run.",
    ),
    "clip_grad": (
        flags.DEFINE_float,
        [],
        "Per-variable gradient-norm clip; 0 turns clipping off.",
    ),
    "batch_size": (
        flags.DEFINE_integer,
        [],
        "Global batch size in images (the learning rate scales with it).",
    ),
    "epochs": (flags.DEFINE_integer, [], "Epochs of the whole run."),
    "freeze_last_layer": (
        flags.DEFINE_integer,
        [],
        "Epochs during which the head's last layer is not updated.",
    ),
    "lr": (
        flags.DEFINE_float,
        [],
        "Peak learning rate per 256 images (times batch_size / 256).",
    ),
    "warmup_epochs": (
        flags.DEFINE_integer,
        [],
        "Epochs of linear learning-rate warm-up from 0.",
    ),
    "min_lr": (
        flags.DEFINE_float,
        [],
        "Learning rate the cosine tends to at the end of the run.",
    ),
    "optimizer": (
        flags.DEFINE_enum,
        ["adamw", "sgd", "lars"],
        "adamw (PyTorch's AdamW), sgd (momentum 0.9) or lars, as the "
        "reference.",
    ),
    "drop_path_rate": (
        flags.DEFINE_float,
        [],
        "Stochastic depth rate of the student.",
    ),
    "global_crops_scale": (
        flags.DEFINE_list,
        [],
        "Area range of global crops, as fractions of the image: min,max.",
    ),
    "local_crops_number": (
        flags.DEFINE_integer,
        [],
        "Local crops per image.",
    ),
    "local_crops_scale": (
        flags.DEFINE_list,
        [],
        "Area range of local crops, as fractions of the image: min,max.",
    ),
    "seed": (
        flags.DEFINE_integer,
        [],
        "Seed of the initial weights, shuffling and augmentation.",
    ),
    "augment_on": (
        flags.DEFINE_enum,
        ["host", "device"],
        "Where the crops are made: host (the tf.data pipeline, any "
        "source) or device (image folders only: PIL decodes and NumPy "
        "draws the crop parameters on the host, "
        "DeviceMultiCropAugmentation makes the crops in the training "
        "step, on the accelerator; one device).",
    ),
    "canvas_size": (
        flags.DEFINE_integer,
        [],
        "--augment_on=device: side in pixels of the square the images are "
        "sent in; larger images are first shrunk to fit.",
    ),
    "dtype_policy": (
        flags.DEFINE_enum,
        ["float32", "mixed_bfloat16", "mixed_float16", "auto"],
        "float32; mixed_bfloat16; mixed_float16 (dynamic loss scaling, "
        "the reference's --use_fp16); auto (bfloat16 where the CPU has "
        "bfloat16 matrix units).",
    ),
}
for _name, (_define, _extra, _help) in _OVERRIDES.items():
    _default = configs.CONFIGS["imagenet_vits16"].get(_name)
    _define(
        _name,
        None,
        *([_extra] if _extra else []),
        f"{_help} Default: the --config's value ({_default} in "
        "imagenet_vits16).",
    )


def _arch_overrides(arch, patch_size):
    """`arch` and `patch_size` config values of an `--arch` flag."""
    if arch.lower() in configs.RESNET_ARCHS:
        return {"arch": arch.lower()}
    try:
        variant, patch = recipe_flags.resolve_arch(arch, patch_size)
    except ValueError as e:
        raise app.UsageError(
            f"{e} (or resnet50 for the ResNet-50 backbone)"
        ) from e
    letter = variant.split("-")[1].split("/")[0]
    names = {v: k for k, v in recipe_flags.REFERENCE_ARCHS.items()}
    return {"arch": names[letter], "patch_size": patch}


def config_from_flags():
    """The named configuration with every flag given on the command line."""
    overrides = {}
    for name in _OVERRIDES:
        value = FLAGS[name].value
        if value is None:
            continue
        if name.endswith("_scale"):
            value = tuple(float(v) for v in value)
        overrides[name] = value
    if "arch" in overrides:
        overrides.update(
            _arch_overrides(overrides["arch"], overrides.get("patch_size"))
        )
    return configs.get_config(FLAGS.config, **overrides)


def _distribution():
    """The `--distribution` setting, or a usage error saying why not."""
    from keras_dino.utils import distribution as distribution_lib

    try:
        distribution = distribution_lib.make_distribution(FLAGS.distribution)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    spread = distribution_lib.is_keras_distribution(distribution) or (
        distribution_lib.num_workers(distribution) > 1
    )
    if FLAGS.knn_npz and spread:
        raise app.UsageError(
            "--knn_npz runs its k-NN curve on one device; it is not "
            f"available with --distribution={FLAGS.distribution} here. "
            "Evaluate the saved checkpoints with recipes/eval_knn.py, or "
            "train with --distribution=none."
        )
    return distribution


def main(argv):
    del argv
    from keras_dino import pretraining

    config = config_from_flags()
    import keras

    if FLAGS.malloc == "keep" or (
        FLAGS.malloc == "auto" and keras.backend.backend() == "torch"
    ):
        from keras_dino.utils.allocator import keep_freed_memory

        keep_freed_memory()
    # First: a multi-process JAX run must connect before any computation.
    strategy = _distribution()
    sources = [FLAGS.data_path, FLAGS.tfds_name, FLAGS.npz]
    if sum(s is not None for s in sources) != 1:
        raise app.UsageError(
            "Give exactly one of --data_path, --tfds_name or --npz."
        )
    if config["augment_on"] == "device":
        dataset, num_images = _device_input(config, strategy)
        steps = FLAGS.steps_per_epoch or len(dataset.reader)
    else:
        needs = [("tensorflow", "the tf.data multi-crop input pipeline")]
        if FLAGS.tfds_name:
            needs.append(("tensorflow_datasets", "--tfds_name"))
        recipe_flags.require("pretrain", needs)
        augmentation = pretraining.multi_crop_augmentation(config)
        dataset, num_images = pretraining.pretraining_dataset(
            augmentation,
            batch_size=config["batch_size"],
            image_folder=FLAGS.data_path,
            tfds_name=FLAGS.tfds_name,
            tfds_data_dir=FLAGS.tfds_data_dir,
            tfds_split=FLAGS.tfds_split,
            npz_paths=FLAGS.npz,
            max_images=FLAGS.max_images,
            seed=config["seed"],
        )
        steps = FLAGS.steps_per_epoch or pretraining.steps_for(
            num_images, config["batch_size"]
        )
    extra = []
    if FLAGS.knn_npz:
        extra.append(_knn_monitor(FLAGS.knn_npz, FLAGS.knn_images))
    print(f"Config {FLAGS.config}: {config}")
    print(
        f"{num_images} images, {steps} steps per epoch, "
        f"{config['epochs']} epochs -> {FLAGS.output_dir}"
    )
    pretraining.pretrain(
        config,
        dataset,
        steps,
        FLAGS.output_dir,
        extra_callbacks=extra,
        verbose=FLAGS.verbose,
        strategy=strategy,
        stop_after_epochs=FLAGS.stop_after_epochs,
    )
    print(
        f"Teacher backbone: "
        f"{os.path.join(FLAGS.output_dir, 'teacher_backbone.keras')}"
    )


def _device_input(config, strategy):
    """The `--augment_on=device` input, or a usage error saying why not."""
    from keras_dino import pretraining

    if FLAGS.data_path is None:
        raise app.UsageError(
            "--augment_on=device reads an image folder: give --data_path "
            "(or use --augment_on=host for --npz and --tfds_name)."
        )
    if FLAGS.max_images:
        raise app.UsageError(
            "--max_images is not available with --augment_on=device; "
            "point --data_path at a smaller folder."
        )
    from keras_dino.utils import distribution as distribution_lib

    if distribution_lib.is_tf_strategy(strategy):
        raise app.UsageError(
            "--augment_on=device cannot feed a tf.distribute strategy; train "
            "on many devices with the JAX backend (--distribution=jax), or "
            "give --augment_on=host on TensorFlow."
        )
    recipe_flags.require(
        "pretrain",
        [("PIL", "reading images with --augment_on=device")],
        extras={"PIL": "numpy_data"},
    )
    return pretraining.device_input(config, FLAGS.data_path)


def _knn_monitor(paths, num_images):
    from keras_dino.data import load_npz
    from keras_dino.evaluation.knn_monitor import KNNMonitor

    images, labels = load_npz(paths, max_examples=num_images)
    half = len(images) // 2
    return KNNMonitor(
        images[:half], labels[:half], images[half:], labels[half:]
    )


if __name__ == "__main__":
    app.run(main)
