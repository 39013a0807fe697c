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

import hashlib
import json
import os

from absl import app
from absl import flags

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "backbone", None, "Backbone (or DINO model) .keras file.", flag_values=FLAGS
)
flags.DEFINE_string(
    "preset", None, "Preset / checkpoint for from_preset.", flag_values=FLAGS
)
flags.DEFINE_string(
    "arch", "ViT-S/16", "Variant used with --random_init.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "random_init", False, "Randomly initialised --arch.", flag_values=FLAGS
)
flags.DEFINE_string(
    "train_data",
    None,
    "Comma-separated .npz files, image folder or tfds:<name>:<split>.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "val_data", None, "Same formats as --train_data.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_train", 0, "Use at most this many (0: all).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_val", 0, "Use at most this many (0: all).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "image_size", 0, "Input size (0: backbone's).", flag_values=FLAGS
)
flags.DEFINE_float(
    "crop_fraction", 0.875, "Validation centre crop.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "n_last_blocks", 4, "CLS tokens of the last n blocks.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "avgpool_patchtokens", False, "Add mean patch token.", flag_values=FLAGS
)
flags.DEFINE_integer("epochs", 100, "Training epochs.", flag_values=FLAGS)
flags.DEFINE_integer(
    "batch_size", 128, "Batch size (scales the lr).", flag_values=FLAGS
)
flags.DEFINE_float(
    "lr", 0.001, "Base learning rate, for batch size 256.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_classes", 0, "Number of classes (0: infer).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "fast", False, "Train the Dense on cached features.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "stream",
    False,
    "With --fast: stream image folders / TFDS with keras_dino.data (needs "
    "TensorFlow) instead of loading them into memory.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "cache_dir", None, "Folder for cached features (--fast).", flag_values=FLAGS
)
flags.DEFINE_string(
    "save_probe", None, "Save the trained probe (.keras).", flag_values=FLAGS
)
flags.DEFINE_string(
    "results_json", None, "Also write the results here.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "seed", 0, "Seed of the initialisation / augmentation.", flag_values=FLAGS
)
flags.mark_flags_as_required(["train_data", "val_data"], flag_values=FLAGS)


def _cache_path(split, source, image_size):
    if not FLAGS.cache_dir:
        return None
    key = "|".join(
        str(v)
        for v in (
            FLAGS.backbone,
            FLAGS.preset,
            FLAGS.arch,
            FLAGS.random_init,
            FLAGS.seed,
            source,
            image_size,
            FLAGS.crop_fraction,
            FLAGS.n_last_blocks,
            FLAGS.avgpool_patchtokens,
            FLAGS.max_train if split == "train" else FLAGS.max_val,
        )
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(FLAGS.cache_dir, f"linear_{split}_{digest}.npz")


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    FLAGS.unparse_flags()
    FLAGS(argv)
    return _run()


def _fast_features(backbone, image_size):
    """Probe features of both splits (arrays, or streamed with --stream)."""
    from keras_dino import evaluation

    extractor = evaluation.ProbeFeatureExtractor(
        backbone,
        n_last_blocks=FLAGS.n_last_blocks,
        avgpool_patchtokens=FLAGS.avgpool_patchtokens,
    )
    preprocessing = evaluation.imagenet_preprocessing(
        image_size, crop_fraction=FLAGS.crop_fraction
    )
    features = {}
    for split, source, limit in (
        ("train", FLAGS.train_data, FLAGS.max_train),
        ("val", FLAGS.val_data, FLAGS.max_val),
    ):
        options = {
            "normalize": False,
            "cache_path": _cache_path(split, source, image_size),
        }
        if FLAGS.stream:
            dataset = evaluation.labeled_dataset(
                source,
                image_size,
                batch_size=FLAGS.batch_size,
                crop_fraction=FLAGS.crop_fraction,
                max_examples=limit or None,
            )
            features[split] = evaluation.extract_features(
                extractor, dataset, **options
            )
        else:
            images, labels = evaluation.load_labeled_images(
                source, image_size=image_size, max_examples=limit or None
            )
            print(f"{split}: {len(images)} images from {source}")
            feats = evaluation.extract_features(
                extractor,
                images,
                batch_size=FLAGS.batch_size,
                preprocessing=preprocessing,
                **options,
            )
            features[split] = (feats, labels)
    return features


def _run():
    import keras

    from keras_dino import evaluation

    if FLAGS.stream and not FLAGS.fast:
        raise ValueError("--stream works with --fast only.")
    keras.utils.set_random_seed(FLAGS.seed)
    kwargs = {"image_size": FLAGS.image_size} if FLAGS.image_size else {}
    backbone = evaluation.load_backbone(
        path=FLAGS.backbone,
        preset=FLAGS.preset,
        arch=FLAGS.arch,
        random_init=FLAGS.random_init,
        **kwargs,
    )
    image_size = FLAGS.image_size or backbone.image_size
    if FLAGS.fast:
        data = _fast_features(backbone, image_size)
    else:
        data = {}
        for split, source, limit in (
            ("train", FLAGS.train_data, FLAGS.max_train),
            ("val", FLAGS.val_data, FLAGS.max_val),
        ):
            data[split] = evaluation.load_labeled_images(
                source, image_size=image_size, max_examples=limit or None
            )
            print(f"{split}: {len(data[split][0])} images from {source}")
    num_classes = FLAGS.num_classes or 1 + int(
        max(data["train"][1].max(), data["val"][1].max())
    )
    probe = evaluation.build_linear_probe(
        backbone,
        num_classes,
        n_last_blocks=FLAGS.n_last_blocks,
        avgpool_patchtokens=FLAGS.avgpool_patchtokens,
    )
    if FLAGS.fast:
        _, results = evaluation.fit_linear_classifier(
            *data["train"],
            *data["val"],
            num_classes=num_classes,
            epochs=FLAGS.epochs,
            batch_size=FLAGS.batch_size,
            base_learning_rate=FLAGS.lr,
            classifier=probe.classifier,
        )
    else:
        results = evaluation.fit_linear_probe(
            probe,
            *data["train"],
            *data["val"],
            epochs=FLAGS.epochs,
            batch_size=FLAGS.batch_size,
            base_learning_rate=FLAGS.lr,
            image_size=image_size,
            crop_fraction=FLAGS.crop_fraction,
            seed=FLAGS.seed,
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


def _main_with_absl(argv):
    del argv
    FLAGS.mark_as_parsed()
    _run()


if __name__ == "__main__":
    # Share the flags with absl's global FLAGS so --help, --flagfile and
    # the logging flags work as usual.
    flags.FLAGS.append_flag_values(FLAGS)
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        for flag in module_flags:
            flags.FLAGS.register_flag_by_module(module, flag)
    app.run(_main_with_absl)
