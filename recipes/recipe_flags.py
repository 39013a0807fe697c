"""Flags shared by the evaluation recipes, and the steps that read them.

Each recipe keeps its flags in its own `flags.FlagValues`, so several
recipes can be imported and run in one process (e.g. from tests); the
functions here define the common flags on such a `FlagValues` and run a
recipe from it. The recipes import this module as `recipe_flags`, after
putting their own folder on `sys.path`.
"""

import hashlib
import os
import sys

from absl import app
from absl import flags


def define_flags(flag_values, *specs):
    """Defines flags given as `(DEFINE_function, name, default, help)`."""
    for define, name, default, help_text in specs:
        define(name, default, help_text, flag_values=flag_values)


def define_backbone_flags(
    flag_values, arch="ViT-S/16", seed_help="Seed of --random_init."
):
    """--backbone, --preset, --arch, --random_init and --seed."""
    define_flags(
        flag_values,
        (
            flags.DEFINE_string,
            "backbone",
            None,
            "Backbone (or DINO model) .keras file.",
        ),
        (
            flags.DEFINE_string,
            "preset",
            None,
            "Preset / checkpoint for from_preset.",
        ),
        (flags.DEFINE_string, "arch", arch, "Variant used with --random_init."),
        (
            flags.DEFINE_bool,
            "random_init",
            False,
            "Randomly initialised --arch.",
        ),
        (flags.DEFINE_integer, "seed", 0, seed_help),
    )


def define_data_flags(
    flag_values,
    batch_size=64,
    batch_size_help="Feature extraction batch size.",
    crop_fraction_help="Centre crop (224/256 in DINO).",
    stream_help="Stream image folders / TFDS with keras_dino.data (needs "
    "TensorFlow) instead of loading them into memory.",
    cache_dir_help="Folder for cached .npz features.",
):
    """The labelled train / validation data flags of the k-NN and linear evals.

    --train_data and --val_data (required), --max_train, --max_val,
    --image_size, --crop_fraction, --batch_size, --num_classes, --stream,
    --cache_dir and --results_json; the arguments are the recipe's own
    --batch_size default and help texts.
    """
    define_flags(
        flag_values,
        (
            flags.DEFINE_string,
            "train_data",
            None,
            "Comma-separated .npz files, image folder or tfds:<name>:<split>.",
        ),
        (
            flags.DEFINE_string,
            "val_data",
            None,
            "Same formats as --train_data.",
        ),
        (
            flags.DEFINE_integer,
            "max_train",
            0,
            "Use at most this many (0: all).",
        ),
        (flags.DEFINE_integer, "max_val", 0, "Use at most this many (0: all)."),
        (flags.DEFINE_integer, "image_size", 0, "Input size (0: backbone's)."),
        (flags.DEFINE_float, "crop_fraction", 0.875, crop_fraction_help),
        (flags.DEFINE_integer, "batch_size", batch_size, batch_size_help),
        (
            flags.DEFINE_integer,
            "num_classes",
            0,
            "Number of classes (0: infer).",
        ),
        (flags.DEFINE_bool, "stream", False, stream_help),
        (flags.DEFINE_string, "cache_dir", None, cache_dir_help),
        (
            flags.DEFINE_string,
            "results_json",
            None,
            "Also write the results here.",
        ),
    )
    flags.mark_flags_as_required(
        ["train_data", "val_data"], flag_values=flag_values
    )


def parse_and_run(flag_values, argv, run_fn):
    """Parses a full command line (program name first), returns `run_fn()`."""
    flag_values.unparse_flags()
    flag_values(argv)
    return run_fn()


def run(run_fn, flag_values):
    """Runs a recipe from the command line with `absl.app.run`.

    The recipe's flags are shared with absl's global FLAGS (as flags of
    the main module) so --help, --flagfile and the logging flags work as
    usual.
    """
    flags.FLAGS.append_flag_values(flag_values)
    for name in flag_values:
        flags.FLAGS.register_flag_by_module(sys.argv[0], flag_values[name])

    def main(argv):
        del argv
        flag_values.mark_as_parsed()
        run_fn()

    app.run(main)


def load_backbone(flag_values, image_size=0):
    """The backbone given by the backbone flags (`image_size` 0: its own)."""
    from keras_dino import evaluation

    kwargs = {"image_size": image_size} if image_size else {}
    return evaluation.load_backbone(
        path=flag_values.backbone,
        preset=flag_values.preset,
        arch=flag_values.arch,
        random_init=flag_values.random_init,
        seed=flag_values.seed,
        **kwargs,
    )


def data_splits(flag_values):
    """`(split, source, max examples or None)` of the train and val data."""
    return (
        ("train", flag_values.train_data, flag_values.max_train or None),
        ("val", flag_values.val_data, flag_values.max_val or None),
    )


def load_split(split, source, max_examples, image_size):
    """`(images, labels)` of one split, in memory."""
    from keras_dino import data

    images, labels = data.load_labeled_images(
        source, image_size=image_size, max_examples=max_examples
    )
    print(f"{split}: {len(images)} images from {source}")
    return images, labels


def cache_path(flag_values, prefix, split, source, image_size, key=()):
    """The --cache_dir file of one split's features (None: no cache).

    The file name hashes everything the features depend on: the backbone
    flags, the data, the preprocessing and the recipe's own `key` values.
    """
    if not flag_values.cache_dir:
        return None
    values = (
        flag_values.backbone,
        flag_values.preset,
        flag_values.arch,
        flag_values.random_init,
        flag_values.seed,
        source,
        image_size,
        flag_values.crop_fraction,
        *key,
        flag_values.max_train if split == "train" else flag_values.max_val,
    )
    key_text = "|".join(str(v) for v in values)
    digest = hashlib.sha1(key_text.encode()).hexdigest()[:12]
    return os.path.join(flag_values.cache_dir, f"{prefix}_{split}_{digest}.npz")


def split_features(
    flag_values, model, image_size, normalize, cache_prefix, cache_key=()
):
    """Features of both splits: `{"train": (features, labels), "val": ...}`.

    The images are loaded into memory and preprocessed (resize, centre
    crop --crop_fraction, ImageNet normalisation), or with --stream read
    as a `tf.data` pipeline by `keras_dino.data`; the features are cached
    in --cache_dir when it is set.
    """
    from keras_dino import data
    from keras_dino import evaluation

    preprocessing = data.CenterCropTransform(
        image_size, crop_fraction=flag_values.crop_fraction
    )
    features = {}
    for split, source, limit in data_splits(flag_values):
        options = {
            "normalize": normalize,
            "cache_path": cache_path(
                flag_values, cache_prefix, split, source, image_size, cache_key
            ),
        }
        if flag_values.stream:
            dataset = data.labeled_dataset(
                source,
                image_size,
                batch_size=flag_values.batch_size,
                crop_fraction=flag_values.crop_fraction,
                max_examples=limit,
            )
            features[split] = evaluation.extract_features(
                model, dataset, **options
            )
        else:
            images, labels = load_split(split, source, limit, image_size)
            feats = evaluation.extract_features(
                model,
                images,
                batch_size=flag_values.batch_size,
                preprocessing=preprocessing,
                **options,
            )
            features[split] = (feats, labels)
    return features
