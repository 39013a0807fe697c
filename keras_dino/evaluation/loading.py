"""Loading backbones and labelled images for the evaluation recipes.

Pillow is imported lazily (image folders and files only); TensorFlow
Datasets only for `tfds:` sources.
"""

import os

import keras
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _backbone_of(model):
    """The ViT inside a loaded model (itself, or a DINO model's teacher)."""
    if hasattr(model, "get_intermediate_layers"):
        return model
    for name in ("teacher_backbone", "teacher", "backbone", "student_backbone"):
        inner = getattr(model, name, None)
        if inner is not None and hasattr(inner, "get_intermediate_layers"):
            return inner
    raise ValueError(
        f"The loaded model {type(model).__name__} is not a ViT backbone and "
        "holds none (looked for teacher_backbone / teacher / backbone)."
    )


def load_backbone(
    path=None, preset=None, arch=None, random_init=False, seed=None, **kwargs
):
    """A ViT backbone for evaluation, from one of three sources.

    Args:
        path: a `.keras` file holding a `ViTBackbone`, or a model that holds
            one (a DINO model: its teacher backbone is used).
        preset: a preset name or checkpoint for `ViTBackbone.from_preset`
            (official DINO weights), when `keras_dino.weights` provides it.
        arch: variant name ("ViT-S/16", ...) for `random_init`.
        random_init: bool, a randomly initialised `arch` backbone (a
            baseline for the learned features).
        seed: optional int, seeds `keras.utils.set_random_seed` for
            `random_init`.
        **kwargs: passed to `from_variant` / `from_preset` (e.g.
            `image_size`).

    Returns:
        The backbone (a `keras.Model` with `get_intermediate_layers`).

    Example:
    >>> backbone = load_backbone("dino_vits16.keras")
    >>> baseline = load_backbone(arch="ViT-S/16", random_init=True)
    """
    from keras_dino.models.vit_backbone import ViTBackbone

    given = [path is not None, preset is not None, bool(random_init)]
    if sum(given) != 1:
        raise ValueError(
            "Give exactly one backbone source: path (.keras), preset, or "
            "random_init with arch."
        )
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"No backbone file at {path!r}.")
        import keras_dino  # noqa: F401  (registers the serialisable classes)

        return _backbone_of(keras.saving.load_model(path, compile=False))
    if preset is not None:
        if not hasattr(ViTBackbone, "from_preset"):
            raise NotImplementedError(
                "ViTBackbone.from_preset is not available in this version "
                "of keras_dino; save the backbone to a .keras file instead."
            )
        return ViTBackbone.from_preset(preset, **kwargs)
    if arch is None:
        raise ValueError("random_init needs arch (e.g. 'ViT-S/16').")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return ViTBackbone.from_variant(arch, **kwargs)


def load_npz(paths, max_examples=None):
    """Images and labels from one or more `.npz` files (concatenated).

    Each file holds `images` `(N, H, W, 3)` uint8 and `labels` `(N,)`, like
    the CIFAR-10 and Imagenette files of this project.

    Args:
        paths: a path or a list of paths.
        max_examples: optional int, keep the first rows only.

    Returns:
        `(images, labels)` numpy arrays.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    images, labels = [], []
    for path in paths:
        with np.load(path) as data:
            missing = {"images", "labels"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks the keys {sorted(missing)}.")
            images.append(data["images"])
            labels.append(data["labels"])
    images, labels = np.concatenate(images), np.concatenate(labels)
    if max_examples is not None:
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels.astype("int64")


def load_image(path, image_size=None):
    """One RGB image as a uint8 array, optionally resized (bicubic).

    Args:
        path: image file.
        image_size: optional int or `(height, width)`.

    Returns:
        `(height, width, 3)` uint8 array.
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if image_size is not None:
            size = (
                (image_size, image_size)
                if isinstance(image_size, int)
                else tuple(image_size)
            )
            img = img.resize((size[1], size[0]), Image.BICUBIC)
        return np.asarray(img, dtype="uint8")


def _resize_center_crop(img, image_size):
    from PIL import Image

    width, height = img.size
    scale = image_size / min(width, height)
    new_w = max(image_size, int(round(width * scale)))
    new_h = max(image_size, int(round(height * scale)))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    return img.crop((left, top, left + image_size, top + image_size))


def load_image_folder(directory, image_size=None, max_per_class=None):
    """A `root/<class>/<image>` folder as arrays (classes sorted by name).

    Args:
        directory: the root folder.
        image_size: optional int; each image's short side is resized to it
            (bicubic) and the centre square is kept. `None`: all images must
            have the same size.
        max_per_class: optional int, first files (sorted) of each class.

    Returns:
        `(images, labels, class_names)`: uint8 `(N, S, S, 3)`, int64 `(N,)`
        and the list of class folder names.
    """
    from PIL import Image

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No image folder at {directory!r}.")
    class_names = sorted(
        d
        for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d))
    )
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        files = sorted(
            f
            for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        for file in files[:max_per_class]:
            with Image.open(os.path.join(folder, file)) as img:
                img = img.convert("RGB")
                if image_size is not None:
                    img = _resize_center_crop(img, image_size)
                images.append(np.asarray(img, dtype="uint8"))
            labels.append(label)
    if not images:
        raise ValueError(f"No images found under {directory!r}.")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"Images under {directory!r} differ in size ({sorted(shapes)[:3]}"
            "...); pass image_size."
        )
    return np.stack(images), np.asarray(labels, "int64"), class_names


def load_tfds(name, split, image_size, max_examples=None):
    """A TFDS image classification split as arrays (needs the data locally).

    Args:
        name: TFDS dataset name (e.g. "imagenette/320px-v2").
        split: split name (e.g. "train", "validation[:10%]").
        image_size: int, short-side resize + centre square (bicubic).
        max_examples: optional int.

    Returns:
        `(images, labels)` uint8 and int64 arrays.
    """
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "TFDS sources need tensorflow and tensorflow-datasets."
        ) from e

    ds = tfds.load(name, split=split, as_supervised=True)
    if max_examples is not None:
        ds = ds.take(max_examples)

    def resize(image, label):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = image_size / tf.reduce_min(shape)
        new = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, new, method="bicubic", antialias=True)
        image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, label

    images, labels = [], []
    for image, label in ds.map(resize).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError(f"TFDS split {name}:{split} is empty.")
    return np.stack(images), np.asarray(labels, "int64")


def load_labeled_images(source, image_size=None, max_examples=None):
    """Images and labels from an `.npz` list, an image folder or TFDS.

    Args:
        source: comma-separated `.npz` paths; an image folder
            (`root/<class>/<image>`); or `tfds:<name>:<split>`.
        image_size: int; used to make folder / TFDS images one size (the
            `.npz` arrays are returned as stored).
        max_examples: optional int, keep this many examples (the first
            rows of `.npz` files; evenly per class for folders).

    Returns:
        `(images, labels)` with uint8 images `(N, H, W, 3)`.

    Example:
    >>> x, y = load_labeled_images("/data/cifar10_val.npz", max_examples=500)
    """
    if source.startswith("tfds:"):
        parts = source.split(":")
        if len(parts) != 3:
            raise ValueError("TFDS sources are 'tfds:<name>:<split>'.")
        if image_size is None:
            raise ValueError("TFDS sources need image_size.")
        return load_tfds(parts[1], parts[2], image_size, max_examples)
    if os.path.isdir(source):
        per_class = None
        if max_examples is not None:
            num_classes = sum(
                os.path.isdir(os.path.join(source, d))
                for d in os.listdir(source)
            )
            per_class = max(1, -(-max_examples // max(num_classes, 1)))
        images, labels, _ = load_image_folder(source, image_size, per_class)
        return images, labels
    paths = [p for p in source.split(",") if p]
    for path in paths:
        if not path.endswith(".npz") or not os.path.isfile(path):
            raise ValueError(
                f"Unknown data source {path!r}: expected existing .npz "
                "file(s), an image folder, or tfds:<name>:<split>."
            )
    return load_npz(paths, max_examples)


def labeled_dataset(
    source, image_size, batch_size=64, crop_fraction=0.875, max_examples=None
):
    """Streams an image folder or TFDS split through `keras_dino.data`.

    For datasets too large to hold in memory (e.g. ImageNet): a batched,
    unshuffled `tf.data.Dataset` of `(images, labels)` with the reference
    evaluation transform (`CenterCropTransform`: bicubic resize of the
    short side to `image_size / crop_fraction`, centre crop, ImageNet
    normalisation), ready for `extract_features(..., preprocessing=None)`.
    Needs TensorFlow (and tensorflow-datasets for TFDS).

    Args:
        source: an image folder (`root/<class>/<image>`) or
            `tfds:<name>:<split>`.
        image_size: int, output side.
        batch_size: int.
        crop_fraction: float, `image_size / resize_size` (224 / 256).
        max_examples: optional int, keep the first examples only.

    Returns:
        A `tf.data.Dataset`.

    Example:
    >>> ds = labeled_dataset("imagenet/val", 224, batch_size=256)
    >>> features, labels = extract_features(backbone, ds)
    """
    from keras_dino import data

    transform = data.CenterCropTransform(
        image_size, resize_size=int(round(image_size / crop_fraction))
    )
    options = {
        "batch_size": batch_size,
        "with_labels": True,
        "shuffle": False,
        "drop_remainder": False,
    }
    if source.startswith("tfds:"):
        parts = source.split(":")
        if len(parts) != 3:
            raise ValueError("TFDS sources are 'tfds:<name>:<split>'.")
        ds = data.from_tfds(parts[1], transform, split=parts[2], **options)
    elif os.path.isdir(source):
        ds = data.from_image_folder(source, transform, **options)
    else:
        raise ValueError(
            f"Streaming needs an image folder or tfds:<name>:<split>; got "
            f"{source!r}."
        )
    if max_examples is not None:
        ds = ds.unbatch().take(max_examples).batch(batch_size)
    return ds
