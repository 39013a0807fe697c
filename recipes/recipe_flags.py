"""Flags shared by the evaluation recipes, and the steps that read them.

Each recipe keeps its flags in its own `flags.FlagValues`, so several
recipes can be imported and run in one process (e.g. from tests); the
functions here define the common flags on such a `FlagValues` and run a
recipe from it. The recipes import this module as `recipe_flags`, after
putting their own folder on `sys.path`.
"""

import hashlib
import importlib
import json
import os
import sys

from absl import app
from absl import flags


def define_flags(flag_values, *specs):
    """Defines flags given as `(DEFINE_function, name, default, help)`."""
    for define, name, default, help_text in specs:
        define(name, default, help_text, flag_values=flag_values)


# The reference's architecture names (`--arch vit_small --patch_size 16`)
# and the variant letter each stands for.
REFERENCE_ARCHS = {"vit_tiny": "T", "vit_small": "S", "vit_base": "B"}
VARIANT_WIDTHS = {"T": 192, "S": 384, "B": 768}

ARCH_HELP = (
    "Architecture: a reference name, vit_tiny, vit_small or vit_base "
    "(192, 384 or 768 wide, 12 blocks), with --patch_size; or a variant "
    "name, ViT-T/16, ViT-S/16, ViT-S/8, ViT-B/16 or ViT-B/8 (width/patch). "
    "Builds the network of --random_init. Given with --backbone or "
    "--preset, it is checked against the loaded backbone."
)


def resolve_arch(arch, patch_size=None):
    """The variant name and patch size of an `--arch` value.

    Args:
        arch: a reference name (`"vit_small"`) or a variant name
            (`"ViT-S/16"`, or `"S/16"`).
        patch_size: int, patch side in pixels for a reference name (which
            has none); for a variant name it must agree or be None.

    Returns:
        `(variant, patch_size)`, e.g. `("ViT-S/8", 8)`.

    Raises:
        ValueError: for an unknown name, or a `patch_size` that contradicts
            the variant name.
    """
    name = arch.strip()
    if name.lower() in REFERENCE_ARCHS:
        letter = REFERENCE_ARCHS[name.lower()]
        patch = 16 if patch_size is None else int(patch_size)
    else:
        body = name[4:] if name.startswith("ViT-") else name
        letter, _, patch_text = body.partition("/")
        if letter not in VARIANT_WIDTHS or not patch_text.isdigit():
            raise ValueError(
                f"Unknown --arch {arch!r}. Use a reference name "
                f"({', '.join(REFERENCE_ARCHS)}) with --patch_size, or a "
                "variant name such as ViT-S/16 or ViT-B/8."
            )
        patch = int(patch_text)
        if patch_size is not None and int(patch_size) != patch:
            raise ValueError(
                f"--arch={arch} has patch size {patch} but --patch_size="
                f"{patch_size}; give one of them (e.g. --arch=vit_small "
                f"--patch_size={patch_size})."
            )
    if patch < 1:
        raise ValueError(f"The patch size must be positive; got {patch}.")
    return f"ViT-{letter}/{patch}", patch


def define_backbone_flags(
    flag_values,
    arch="vit_small",
    patch_size=16,
    seed_help="Seed of the --random_init weights.",
):
    """--backbone, --preset (alias --pretrained_weights), --arch,
    --patch_size, --random_init and --seed."""
    define_flags(
        flag_values,
        (
            flags.DEFINE_string,
            "backbone",
            None,
            "Path of a .keras file holding a ViTBackbone, or a whole DINO "
            "model (its teacher backbone is used), e.g. "
            "runs/vits16/teacher_backbone.keras. Give exactly one of "
            "--backbone, --preset and --random_init.",
        ),
        (
            flags.DEFINE_string,
            "preset",
            None,
            "Pretrained weights: a preset name (e.g. dino_vits16, "
            "dino_vitb8: the official DINO backbones), a reference .pth or "
            ".safetensors file, a Hugging Face id such as "
            "facebook/dino-vits16 with a local copy, or a URL. Also "
            "accepted as --pretrained_weights, the reference's name.",
        ),
        (flags.DEFINE_string, "arch", arch, ARCH_HELP),
        (
            flags.DEFINE_integer,
            "patch_size",
            patch_size,
            "Patch side in pixels (16 or 8) of a reference --arch name; a "
            "variant name such as ViT-S/8 carries its own.",
        ),
        (
            flags.DEFINE_bool,
            "random_init",
            False,
            "Evaluate a randomly initialised --arch network instead of "
            "trained weights: the baseline that learned features are "
            "compared with.",
        ),
        (flags.DEFINE_integer, "seed", 0, seed_help),
    )
    flags.DEFINE_alias("pretrained_weights", "preset", flag_values=flag_values)


def define_data_flags(
    flag_values,
    batch_size=64,
    batch_size_help="Images per batch of the feature extraction.",
    crop_fraction_help=None,
    stream_help="Stream the images batch by batch instead of reading "
    "them all into memory first (for data sets larger than the memory, "
    "e.g. ImageNet).",
    cache_dir_help="Folder for the extracted features (.npz files named "
    "after the backbone, data and preprocessing flags): a later run with "
    "the same flags reads them instead of running the backbone. Default: "
    "no cache.",
):
    """The labelled train / validation data flags of the k-NN and linear evals.

    --train_data and --val_data (required), --max_train, --max_val,
    --image_size, --crop_fraction, --batch_size, --num_classes, --stream,
    --cache_dir and --results_json; the arguments are the recipe's own
    --batch_size default and help texts.
    """
    if crop_fraction_help is None:
        crop_fraction_help = (
            "Centre crop, as a fraction of the resized image: the short "
            "side is resized to --image_size / crop_fraction pixels, then "
            "the centre --image_size square is kept (0.875 = 224/256, the "
            "reference's; 1.0: no crop)."
        )
    define_flags(
        flag_values,
        (
            flags.DEFINE_string,
            "train_data",
            None,
            "Labelled training images: comma-separated .npz files (arrays "
            "images (N, H, W, 3) uint8 and labels (N,) int), an image "
            "folder root/<class>/<image> (JPEG, PNG, BMP, GIF, WebP), or "
            "tfds:<name>:<split> (needs tensorflow-datasets, e.g. "
            "tfds:imagenette/320px-v2:train).",
        ),
        (
            flags.DEFINE_string,
            "val_data",
            None,
            "Labelled validation images, in the same forms as --train_data.",
        ),
        (
            flags.DEFINE_integer,
            "max_train",
            0,
            "Use at most this many training images (0: all; from a folder "
            "they are taken evenly from each class).",
        ),
        (
            flags.DEFINE_integer,
            "max_val",
            0,
            "Use at most this many validation images (0: all).",
        ),
        (
            flags.DEFINE_integer,
            "image_size",
            0,
            "Side in pixels of the square the backbone sees (0: the "
            "backbone's own training size, e.g. 224 for the presets).",
        ),
        (flags.DEFINE_float, "crop_fraction", 0.875, crop_fraction_help),
        (flags.DEFINE_integer, "batch_size", batch_size, batch_size_help),
        (
            flags.DEFINE_integer,
            "num_classes",
            0,
            "Number of classes (0: one more than the largest label seen).",
        ),
        (flags.DEFINE_bool, "stream", False, stream_help),
        (flags.DEFINE_string, "cache_dir", None, cache_dir_help),
        (
            flags.DEFINE_string,
            "results_json",
            None,
            "Also write the results to this JSON file (default: printed only).",
        ),
    )
    flags.mark_flags_as_required(
        ["train_data", "val_data"], flag_values=flag_values
    )


# Optional dependencies: import name -> (pip package, extra that installs
# it). The extras are those of setup.cfg.
OPTIONAL_DEPENDENCIES = {
    "tensorflow": ("tensorflow", "data"),
    "tensorflow_datasets": ("tensorflow-datasets", "data"),
    "tensorboard": ("tensorboard", "data"),
    "matplotlib": ("matplotlib", "eval"),
    "PIL": ("pillow", "eval"),
}


class MissingDependencyError(ImportError):
    """An optional package a recipe needs for the given flags is missing."""


def require(recipe, needs, extras=None):
    """Checks that the optional packages a run needs import, before it starts.

    Args:
        recipe: the recipe's name, for the message.
        needs: iterable of `(import name, what it is needed for)`.
        extras: optional dict `import name -> extra` overriding the extra
            named in the message (e.g. `{"matplotlib": "demo"}`).

    Raises:
        MissingDependencyError: naming every missing package, what it is
            needed for and the `pip install` command that adds it.
    """
    missing = []
    for module, purpose in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append((module, purpose))
    if not missing:
        return
    extras = {
        **{m: e for m, (_, e) in OPTIONAL_DEPENDENCIES.items()},
        **(extras or {}),
    }
    lines = [
        f"  {OPTIONAL_DEPENDENCIES[m][0]} ({purpose})" for m, purpose in missing
    ]
    names = sorted({extras[m] for m, _ in missing})
    raise MissingDependencyError(
        f"{recipe} needs packages that are not installed:\n"
        + "\n".join(lines)
        + "\nInstall them with: pip install "
        + " ".join(f'"keras-dino[{name}]"' for name in names)
        + " (from a clone: pip install -e "
        + " ".join(f'".[{name}]"' for name in names)
        + ")."
    )


def data_needs(flag_values):
    """`(import name, purpose)` pairs the --train_data / --val_data need."""
    needs = [("tensorflow", "reading and preprocessing the images")]
    sources = (flag_values.train_data or "", flag_values.val_data or "")
    if any(source.startswith("tfds:") for source in sources):
        needs.append(("tensorflow_datasets", "the tfds: data sources"))
    return needs


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


def backbone_from_flags(flag_values, image_size=0):
    """The backbone given by the backbone flags (`image_size` 0: its own).

    With --random_init, builds --arch (with --patch_size); with --backbone
    or --preset, an --arch given on the command line must match the
    loaded backbone's width and patch size.
    """
    from keras_dino import evaluation

    variant, patch = resolve_arch(
        flag_values.arch,
        flag_values.patch_size
        if flag_values["patch_size"].present
        or flag_values.arch.lower() in REFERENCE_ARCHS
        else None,
    )
    kwargs = {"image_size": image_size} if image_size else {}
    if flag_values.random_init:
        # The table's /16 variant of this width, at the asked patch size.
        kwargs["patch_size"] = patch
        variant = variant.split("/")[0] + "/16"
    backbone = evaluation.load_backbone(
        path=flag_values.backbone,
        preset=flag_values.preset,
        arch=variant,
        random_init=flag_values.random_init,
        seed=flag_values.seed,
        **kwargs,
    )
    if not flag_values.random_init and flag_values["arch"].present:
        width = VARIANT_WIDTHS[variant[4]]
        got = (int(backbone.hidden_dim), int(backbone.patch_size))
        if got != (width, patch):
            raise ValueError(
                f"--arch={flag_values.arch} (width {width}, patch {patch}) "
                f"does not match the loaded backbone (width {got[0]}, patch "
                f"{got[1]}). Drop --arch (it is read from the weights) or "
                "give the matching one."
            )
    return backbone


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


def model_digest(model):
    """A hash of a feature model's content: its configuration and weights.

    Keys the --cache_dir files on what the backbone computes rather than on
    where it was loaded from, so a backbone retrained and saved at the
    same path does not reuse the features of the old one.
    """
    import keras
    import numpy as np

    digest = hashlib.sha256(type(model).__name__.encode())
    try:
        config = json.dumps(model.get_config(), sort_keys=True, default=str)
    except Exception:  # a model without a serialisable configuration
        config = ""
    digest.update(config.encode())
    for weight in getattr(model, "weights", []):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        header = f"{weight.path}|{value.shape}|{value.dtype}|"
        digest.update(header.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def source_identity(source):
    """What identifies a data source's content cheaply: for each local
    file or folder of `source` (comma-separated), its real path, size and
    modification time (of a folder: of it and of its sub-folders, the
    classes); other sources (tfds:...) by their name."""
    parts = []
    for part in str(source).split(","):
        path = part.strip()
        if not os.path.exists(path):
            parts.append(path)
            continue
        entries = [os.path.realpath(path)]
        if os.path.isdir(path):
            entries += sorted(
                e.path
                for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith(".")
            )
        for entry in entries:
            info = os.stat(entry)
            parts.append(f"{entry}:{info.st_size}:{info.st_mtime_ns}")
    return "|".join(parts)


def cache_path(flag_values, prefix, split, source, image_size, key=()):
    """The --cache_dir file of one split's features (None: no cache).

    The file name hashes everything the features depend on: the backbone
    flags, the data (`source_identity`: paths, sizes and modification
    times), the preprocessing and the recipe's own `key` values;
    `split_features` adds the backbone's content (`model_digest`) to
    `key`.
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
        source_identity(source),
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
    if flag_values.cache_dir:
        # Keyed on the weights, not only the backbone's path.
        cache_key = (*cache_key, model_digest(model))
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
