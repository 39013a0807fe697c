"""Frozen feature extraction for the DINO evaluation protocols."""

import os
import warnings

import keras
import numpy as np
from keras import ops


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
            before the model, e.g. `keras_dino.data.CenterCropTransform(
            224, crop_fraction=0.875)` (the reference evaluation
            transform) or `keras_dino.layers.ImagePreprocessing()`.
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
    >>> prep = keras_dino.data.CenterCropTransform(32, crop_fraction=1.0)
    >>> feats = extract_features(backbone, x, preprocessing=prep, verbose=0)
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
            images = ops.convert_to_numpy(preprocessing(images))
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
