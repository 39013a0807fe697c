r"""Linear probe on frozen ViT features (DINO's eval_linear.py).

A `Dense(num_classes)` on the concatenated CLS tokens of the last
`--n_last_blocks` blocks (and, with `--avgpool_patchtokens`, the mean patch
token), SGD momentum 0.9, learning rate `--lr * batch_size / 256` with a
per-epoch cosine decay to 0, random-resized crop + flip on training images;
prints the best validation top-1. `--fast` trains the `Dense` on features
computed once (no augmentation), which fits a CPU.

Example:

```
python recipes/eval_linear.py --backbone=runs/dino/teacher_backbone.keras \
  --train_data=/data/imagenette224/train --val_data=/data/imagenette224/val \
  --epochs=100 --batch_size=256
python recipes/eval_linear.py --fast --backbone=backbone.keras \
  --train_data=/data/cifar10_train.part0.npz --val_data=/data/cifar10_val.npz
```
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_flags  # noqa: E402  (this folder, put on sys.path above)

FLAGS = flags.FlagValues()
recipe_flags.define_backbone_flags(
    FLAGS, seed_help="Seed of the initialisation / augmentation."
)
recipe_flags.define_data_flags(
    FLAGS,
    batch_size=128,
    batch_size_help="Batch size (scales the lr).",
    crop_fraction_help="Validation centre crop.",
    stream_help="With --fast: stream image folders / TFDS with keras_dino.data "
    "(needs TensorFlow) instead of loading them into memory.",
    cache_dir_help="Folder for cached features (--fast).",
)
recipe_flags.define_flags(
    FLAGS,
    (
        flags.DEFINE_integer,
        "n_last_blocks",
        4,
        "CLS tokens of the last n blocks.",
    ),
    (flags.DEFINE_bool, "avgpool_patchtokens", False, "Add mean patch token."),
    (flags.DEFINE_integer, "epochs", 100, "Training epochs."),
    (
        flags.DEFINE_float,
        "lr",
        0.001,
        "Base learning rate, for batch size 256.",
    ),
    (flags.DEFINE_bool, "fast", False, "Train the Dense on cached features."),
    (
        flags.DEFINE_string,
        "save_probe",
        None,
        "Save the trained probe (.keras).",
    ),
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


def _run():
    import keras

    from keras_dino import evaluation

    if FLAGS.stream and not FLAGS.fast:
        raise ValueError("--stream works with --fast only.")
    keras.utils.set_random_seed(FLAGS.seed)
    backbone = recipe_flags.load_backbone(FLAGS, image_size=FLAGS.image_size)
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
