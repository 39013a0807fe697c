r"""Linear probe on frozen ViT features (DINO's eval_linear.py).

A `Dense(num_classes)` on the concatenated CLS tokens of the last
`--n_last_blocks` blocks (and, with `--avgpool_patchtokens`, the mean patch
token), SGD momentum 0.9, learning rate `--lr * batch_size / 256` with a
per-epoch cosine decay to 0, random-resized crop + flip on training images;
prints the best validation top-1. `--fast` trains the `Dense` on features
computed once (no augmentation), which fits a CPU.

Example:

```
python recipes/eval_linear.py --pretrained_weights=dino_vits16 \
  --arch=vit_small --patch_size=16 --n_last_blocks=4 \
  --train_data=/data/imagenet/train --val_data=/data/imagenet/val \
  --epochs=100 --batch_size=256
python recipes/eval_linear.py --fast --n_last_blocks=1 \
  --backbone=runs/demo/teacher_backbone.keras --crop_fraction=1.0 \
  --train_data=recipes/data/cifar10_demo_train.npz \
  --val_data=recipes/data/cifar10_demo_val.npz
```

Needs TensorFlow to read the images (`pip install "keras-dino[data]"`).
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FlagValues()
recipe_flags.define_backbone_flags(
    FLAGS,
    seed_help="Seed of the classifier's initial weights, the training "
    "augmentation and the order of the images (and of --random_init).",
)
recipe_flags.define_data_flags(
    FLAGS,
    batch_size=128,
    batch_size_help="Images per training step of the classifier (and per "
    "batch of the feature extraction); the learning rate is scaled by "
    "batch_size / 256.",
    crop_fraction_help="Centre crop of the validation images (and of all "
    "images with --fast), as a fraction of the resized image: the short "
    "side is resized to --image_size / crop_fraction pixels, then the "
    "centre --image_size square is kept (0.875 = 224/256, the reference's; "
    "1.0: no crop).",
    stream_help="With --fast: stream the images batch by batch instead of "
    "reading them all into memory first (for data sets larger than the "
    "memory, e.g. ImageNet).",
    cache_dir_help="With --fast: folder for the extracted features (.npz "
    "files named after the backbone, data and preprocessing flags); a "
    "later run with the same flags reads them instead of running the "
    "backbone. Default: no cache.",
)
recipe_flags.define_flags(
    FLAGS,
    (
        flags.DEFINE_integer,
        "n_last_blocks",
        4,
        "Number of last transformer blocks whose CLS tokens are "
        "concatenated into the classifier's input (at most the backbone's "
        "depth). The reference uses 4 for ViT-S and 1 for ViT-B.",
    ),
    (
        flags.DEFINE_bool,
        "avgpool_patchtokens",
        False,
        "Also concatenate the mean of the last block's patch tokens (needs "
        "--n_last_blocks=1; the reference uses it for ViT-B).",
    ),
    (
        flags.DEFINE_integer,
        "epochs",
        100,
        "Training epochs of the classifier (passes over --train_data).",
    ),
    (
        flags.DEFINE_float,
        "lr",
        0.001,
        "Learning rate of SGD (momentum 0.9) at batch size 256; the one used "
        "is lr * batch_size / 256, decayed to 0 by a per-epoch cosine.",
    ),
    (
        flags.DEFINE_bool,
        "fast",
        False,
        "Extract the features once (centre crops, no augmentation) and "
        "train the classifier on them: minutes on a CPU instead of a "
        "backbone pass per step.",
    ),
    (
        flags.DEFINE_string,
        "save_probe",
        None,
        "Also save the trained probe (backbone and classifier) to this "
        ".keras file (default: not saved).",
    ),
)
flags.register_validator(
    "n_last_blocks",
    lambda n: n >= 1,
    "--n_last_blocks must be at least 1.",
    flag_values=FLAGS,
)


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    return recipe_flags.parse_and_run(FLAGS, argv, _run)


def _fast_features(backbone, image_size):
    """Probe features of both splits (arrays, or streamed with --stream)."""
    from keras_dino import evaluation

    extractor = evaluation.ProbeFeatureExtractor(
        backbone,
        n_last_blocks=FLAGS.n_last_blocks,
        avgpool_patchtokens=FLAGS.avgpool_patchtokens,
    )
    return recipe_flags.split_features(
        FLAGS,
        extractor,
        image_size,
        normalize=False,
        cache_prefix="linear",
        cache_key=(FLAGS.n_last_blocks, FLAGS.avgpool_patchtokens),
    )


def check_n_last_blocks(n_last_blocks, backbone):
    """Raises a clear error if the backbone has fewer than n blocks."""
    depth = int(backbone.num_layers)
    if n_last_blocks > depth:
        raise ValueError(
            f"--n_last_blocks={n_last_blocks}, but the backbone has only "
            f"{depth} transformer block(s): pass --n_last_blocks between 1 "
            f"and {depth} (the reference uses 4 for ViT-S and 1 for ViT-B)."
        )


def _run():
    recipe_flags.require("eval_linear", recipe_flags.data_needs(FLAGS))
    import keras

    from keras_dino import evaluation

    if FLAGS.stream and not FLAGS.fast:
        raise ValueError("--stream works with --fast only.")
    if FLAGS.avgpool_patchtokens and FLAGS.n_last_blocks != 1:
        raise ValueError(
            "--avgpool_patchtokens needs --n_last_blocks=1 (as in the "
            f"reference); got --n_last_blocks={FLAGS.n_last_blocks}."
        )
    keras.utils.set_random_seed(FLAGS.seed)
    backbone = recipe_flags.backbone_from_flags(
        FLAGS, image_size=FLAGS.image_size
    )
    check_n_last_blocks(FLAGS.n_last_blocks, backbone)
    image_size = FLAGS.image_size or backbone.image_size
    if FLAGS.fast:
        data = _fast_features(backbone, image_size)
    else:
        data = {
            split: recipe_flags.load_split(split, source, limit, image_size)
            for split, source, limit in recipe_flags.data_splits(FLAGS)
        }
    num_classes = FLAGS.num_classes or 1 + int(
        max(data["train"][1].max(), data["val"][1].max())
    )
    probe = evaluation.build_linear_probe(
        backbone,
        num_classes,
        n_last_blocks=FLAGS.n_last_blocks,
        avgpool_patchtokens=FLAGS.avgpool_patchtokens,
    )
    training = {
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "base_learning_rate": FLAGS.lr,
    }
    if FLAGS.fast:
        _, results = evaluation.fit_linear_classifier(
            *data["train"],
            *data["val"],
            num_classes=num_classes,
            classifier=probe.classifier,
            **training,
        )
    else:
        results = evaluation.fit_linear_probe(
            probe,
            *data["train"],
            *data["val"],
            image_size=image_size,
            crop_fraction=FLAGS.crop_fraction,
            seed=FLAGS.seed,
            **training,
        )
    print(
        f"Max accuracy so far: {results['best_top1']:.2f}% "
        f"(epoch {results['best_epoch']}, top-5 {results['best_top5']:.2f}%)"
    )
    print(
        "Training of the supervised linear classifier on frozen features "
        f"completed. Top-1 test accuracy: {results['best_top1']:.1f}"
    )
    if FLAGS.save_probe:
        probe.save(FLAGS.save_probe)
    if FLAGS.results_json:
        summary = {k: v for k, v in results.items() if k != "history"}
        with open(FLAGS.results_json, "w") as f:
            json.dump(summary, f, indent=2)
    return results


if __name__ == "__main__":
    recipe_flags.run(_run, FLAGS)
