r"""Weighted k-NN evaluation of frozen ViT features (DINO's eval_knn.py).

Extracts L2-normalised CLS features of the train and validation images
(resized to the backbone's input size, centre crop `--crop_fraction`,
ImageNet normalisation) and prints the top-1 / top-5 accuracy of the
weighted k-NN classifier for each k.

Example:

```
python recipes/eval_knn.py --backbone=runs/dino/teacher_backbone.keras \
  --train_data=/data/cifar10_train.part0.npz,/data/cifar10_train.part1.npz \
  --val_data=/data/cifar10_val.npz --cache_dir=runs/knn_cache
python recipes/eval_knn.py --random_init --arch=ViT-S/16 \
  --train_data=/data/imagenette224/train --val_data=/data/imagenette224/val
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
    "crop_fraction", 0.875, "Centre crop (224/256 in DINO).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "batch_size", 64, "Feature extraction batch size.", flag_values=FLAGS
)
flags.DEFINE_list(
    "ks",
    ["10", "20", "100", "200"],
    "Numbers of neighbours.",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "temperature", 0.07, "Temperature of the k-NN weights.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_classes", 0, "Number of classes (0: infer).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "stream",
    False,
    "Stream image folders / TFDS with keras_dino.data (needs TensorFlow) "
    "instead of loading them into memory.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "cache_dir", None, "Folder for cached .npz features.", flag_values=FLAGS
)
flags.DEFINE_string(
    "results_json", None, "Also write the results here.", flag_values=FLAGS
)
flags.DEFINE_integer("seed", 0, "Seed of --random_init.", flag_values=FLAGS)
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
            FLAGS.max_train if split == "train" else FLAGS.max_val,
        )
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(FLAGS.cache_dir, f"knn_{split}_{digest}.npz")


def main(argv):
    """Runs the recipe; `argv` is a full command line, program name first.

    The flags live in this module's own `FlagValues`, so several recipes
    can be imported and run in one process (e.g. from tests).
    """
    FLAGS.unparse_flags()
    FLAGS(argv)
    return _run()


def _run():
    from keras_dino import evaluation

    kwargs = {"image_size": FLAGS.image_size} if FLAGS.image_size else {}
    backbone = evaluation.load_backbone(
        path=FLAGS.backbone,
        preset=FLAGS.preset,
        arch=FLAGS.arch,
        random_init=FLAGS.random_init,
        seed=FLAGS.seed,
        **kwargs,
    )
    image_size = FLAGS.image_size or backbone.image_size
    preprocessing = evaluation.imagenet_preprocessing(
        image_size, crop_fraction=FLAGS.crop_fraction
    )
    features = {}
    for split, source, limit in (
        ("train", FLAGS.train_data, FLAGS.max_train),
        ("val", FLAGS.val_data, FLAGS.max_val),
    ):
        options = {
            "normalize": True,
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
                backbone, dataset, **options
            )
        else:
            images, labels = evaluation.load_labeled_images(
                source, image_size=image_size, max_examples=limit or None
            )
            print(f"{split}: {len(images)} images from {source}")
            feats = evaluation.extract_features(
                backbone,
                images,
                batch_size=FLAGS.batch_size,
                preprocessing=preprocessing,
                **options,
            )
            features[split] = (feats, labels)
    results = evaluation.knn_evaluate(
        *features["train"],
        *features["val"],
        ks=[int(k) for k in FLAGS.ks],
        temperature=FLAGS.temperature,
        num_classes=FLAGS.num_classes or None,
    )
    for k, accuracy in results.items():
        print(
            f"{k}-NN classifier result: Top1: {accuracy['top1']:.2f}, "
            f"Top5: {accuracy['top5']:.2f}"
        )
    if FLAGS.results_json:
        with open(FLAGS.results_json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=2)
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
