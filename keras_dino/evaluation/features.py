"""Frozen feature extraction for the DINO evaluation protocols."""

import functools
import os
import warnings

import keras
import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_images(
    images,
    image_size=None,
    crop_fraction=1.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bicubic",
):
    """Evaluation preprocessing: centre crop, resize, normalise.

    The DINO evaluation transform is `Resize(256, bicubic)`,
    `CenterCrop(224)`, `ToTensor`, `Normalize(ImageNet)`. Here the centre
    crop comes first (`crop_fraction` of each side, 224 / 256 = 0.875 in
    the reference) and the crop is then resized to `image_size`, which is
    the same thing for square images.

    Args:
        images: `(batch, height, width, 3)` RGB array. `uint8` arrays hold
            pixels in [0, 255]; floating-point arrays must hold [0, 1].
        image_size: int or `(height, width)`; output size. `None` keeps the
            (cropped) size.
        crop_fraction: float in (0, 1], fraction of the height and width
            kept by the centre crop.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        interpolation: resize method of `keras.ops.image.resize`.

    Returns:
        A float32 numpy array `(batch, image_size, image_size, 3)`.

    Example:
    >>> x = np.zeros((2, 32, 32, 3), "uint8")
    >>> preprocess_images(x, image_size=64).shape
    (2, 64, 64, 3)
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "Expected images of shape (batch, height, width, 3); got "
            f"{images.shape}."
        )
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(
            f"crop_fraction must be in (0, 1]; got {crop_fraction}"
        )
    if images.dtype == np.uint8:
        x = images.astype("float32") / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        x = images.astype("float32")
    else:
        raise ValueError(
            f"Images must be uint8 or floating point; got {images.dtype}."
        )
    height, width = x.shape[1:3]
    if crop_fraction < 1.0:
        crop_h = max(1, int(round(height * crop_fraction)))
        crop_w = max(1, int(round(width * crop_fraction)))
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        x = x[:, top : top + crop_h, left : left + crop_w]
    if image_size is not None:
        size = (
            (image_size, image_size)
            if isinstance(image_size, int)
            else tuple(image_size)
        )
        if tuple(x.shape[1:3]) != size:
            x = ops.image.resize(
                x, size, interpolation=interpolation, antialias=True
            )
            x = ops.convert_to_numpy(ops.clip(x, 0.0, 1.0))
    mean = np.asarray(mean, "float32")
    std = np.asarray(std, "float32")
    return ((x - mean) / std).astype("float32")


def imagenet_preprocessing(image_size=None, crop_fraction=1.0, **kwargs):
    """Returns `preprocess_images` with its settings bound.

    Args:
        image_size: int, output size (e.g. `backbone.image_size`).
        crop_fraction: float, centre-crop fraction (0.875 = 224 / 256 in
            the DINO evaluation protocol).
        **kwargs: other `preprocess_images` arguments.

    Returns:
        A callable mapping a numpy batch to a preprocessed numpy batch.

    Example:
    >>> fn = imagenet_preprocessing(224, crop_fraction=0.875)
    >>> features = extract_features(backbone, images, preprocessing=fn)
    """
    return functools.partial(
        preprocess_images,
        image_size=image_size,
        crop_fraction=crop_fraction,
        **kwargs,
    )


def l2_normalize(features, axis=-1, epsilon=1e-12):
    """L2-normalises rows like `torch.nn.functional.normalize`."""
    features = np.asarray(features, dtype="float32")
    norm = np.linalg.norm(features, axis=axis, keepdims=True)
    return features / np.maximum(norm, epsilon)


def _forward_fn(model):
    """Returns `batch -> numpy features` for a model or a callable."""
    if isinstance(model, keras.Model):
        # Compiled (jit / tf.function) inference with training=False.
        return model.predict_on_batch, True
    if isinstance(model, keras.layers.Layer):
        return lambda x: model(x, training=False), False
    if callable(model):
        return model, False
    raise TypeError(
        "`model` must be a keras.Model, a keras Layer or a callable mapping "
        f"images to features; got {type(model).__name__}."
    )


def _is_array(data):
    return isinstance(data, np.ndarray) or (
        hasattr(data, "shape") and hasattr(data, "dtype")
    )


def _iterate(data):
    """Yields numpy `(images, labels_or_None)` batches of a dataset."""
    if hasattr(data, "as_numpy_iterator"):  # tf.data, without importing tf
        iterator = data.as_numpy_iterator()
    else:
        iterator = iter(data)
    for element in iterator:
        if isinstance(element, dict):
            images = element.get("images", element.get("image"))
            labels = element.get("labels", element.get("label"))
            if images is None:
                raise ValueError(
                    "Dataset dict elements need an 'image(s)' key; got "
                    f"{sorted(element)}."
                )
        elif isinstance(element, (tuple, list)):
            images, labels = (
                element[0],
                element[1] if len(element) > 1 else None,
            )
        else:
            images, labels = element, None
        images = ops.convert_to_numpy(images)
        if labels is not None:
            labels = ops.convert_to_numpy(labels)
        yield images, labels


def _cache_file(cache_path):
    cache_path = os.fspath(cache_path)
    return cache_path if cache_path.endswith(".npz") else cache_path + ".npz"


def extract_features(
    model,
    data,
    batch_size=64,
    preprocessing=None,
    normalize=True,
    cache_path=None,
    verbose="auto",
):
    """Computes frozen features of a backbone over a whole dataset.

    The model runs in inference mode (`training=False`, compiled
    `predict_on_batch` for a `keras.Model`); batches are padded to a fixed
    size so that the compiled function is traced once. Features are
    returned in float32 and, by default, L2-normalised per row as the DINO
    k-NN protocol does.

    Args:
        model: a `ViTBackbone` (CLS features), any `keras.Model`/layer or
            callable mapping a batch of images to `(batch, dim)` features.
        data: a numpy array `(num_images, height, width, 3)` (uint8 or
            float), or a batched `tf.data.Dataset` / iterable of batches
            that yields `(images, labels)` pairs, `{"image(s)",
            "label(s)"}` dicts or bare image batches.
        batch_size: int, batch size for array inputs.
        preprocessing: optional callable applied to each numpy image batch
            before the model, e.g. `imagenet_preprocessing(224)`.
        normalize: bool, L2-normalise each feature vector.
        cache_path: optional path of an `.npz` cache. When the file exists
            (and, for arrays, holds one row per image) it is loaded and the
            model is not run; otherwise it is written after extraction.
        verbose: `"auto"`, 0 or 1; shows a `keras.utils.Progbar`.

    Returns:
        For an array input, the float32 features `(num_images, dim)`. For a
        dataset, `(features, labels)`, `labels` being `None` when the
        dataset has none.

    Example:
    >>> backbone = ViTBackbone.from_variant("ViT-T/16", image_size=32)
    >>> x = np.random.randint(0, 256, (10, 32, 32, 3), "uint8")
    >>> feats = extract_features(
    ...     backbone, x, preprocessing=imagenet_preprocessing(32), verbose=0
    ... )
    >>> feats.shape
    (10, 192)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    if preprocessing is not None and not callable(preprocessing):
        raise TypeError("`preprocessing` must be callable or None.")
    is_array = _is_array(data)
    if is_array:
        data = np.asarray(data)
        if data.ndim != 4:
            raise ValueError(
                "Expected an image array (num_images, height, width, "
                f"channels); got shape {data.shape}."
            )

    cache_file = None if cache_path is None else _cache_file(cache_path)
    if cache_file is not None and os.path.exists(cache_file):
        with np.load(cache_file) as cached:
            features = cached["features"]
            labels = cached["labels"] if "labels" in cached else None
        if not is_array:
            return features, labels
        if len(features) == len(data):
            return features
        warnings.warn(
            f"Feature cache {cache_file} holds {len(features)} rows but "
            f"{len(data)} images were given; recomputing it.",
            stacklevel=2,
        )

    forward, pad = _forward_fn(model)
    if verbose == "auto":
        verbose = 1
    if is_array:
        steps = -(-len(data) // batch_size)
        batches = (
            (data[i : i + batch_size], None)
            for i in range(0, len(data), batch_size)
        )
    else:
        try:
            steps = len(data)
        except TypeError:  # no len, or a tf.data dataset of unknown length
            steps = None
        batches = _iterate(data)
    progbar = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")

    outputs, all_labels, full = [], [], None
    for step, (images, labels) in enumerate(batches):
        if preprocessing is not None:
            images = preprocessing(images)
        images = np.asarray(images)
        n = len(images)
        if full is None:
            full = n
        if pad and n < full:
            # A fixed batch shape avoids retracing the compiled function.
            images = np.pad(
                images,
                [(0, full - n)] + [(0, 0)] * (images.ndim - 1),
                mode="edge",
            )
        feats = ops.convert_to_numpy(forward(images))[:n]
        if feats.ndim != 2:
            raise ValueError(
                "The model must return (batch, dim) features; got shape "
                f"{feats.shape}."
            )
        outputs.append(feats.astype("float32"))
        if labels is not None:
            all_labels.append(np.asarray(labels))
        progbar.update(step + 1)
    if not outputs:
        raise ValueError("No images to extract features from.")

    features = np.concatenate(outputs)
    if normalize:
        features = l2_normalize(features)
    labels = np.concatenate(all_labels) if all_labels else None

    if cache_file is not None:
        os.makedirs(os.path.dirname(cache_file) or ".", exist_ok=True)
        arrays = {"features": features}
        if labels is not None:
            arrays["labels"] = labels
        np.savez(cache_file, **arrays)
    if is_array:
        return features
    return features, labels
