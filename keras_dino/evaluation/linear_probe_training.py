"""Training a linear probe with the reference linear protocol.

A `Dense(num_classes)` is trained with SGD (momentum 0.9, no weight decay),
learning rate `0.001 * batch_size / 256` and a per-epoch cosine decay to 0
(`EpochCosineDecay`). `fit_linear_probe` trains on images: training images
get a random-resized crop and a horizontal flip
(`keras_dino.data.RandomResizedCropTransform`), validation images a centre
crop (`keras_dino.data.CenterCropTransform`); the best validation top-1
over the epochs is reported. `fit_linear_classifier` is the fast variant
for CPUs: the backbone runs once (`extract_features` on
`LinearProbe.feature_extractor`) and only the `Dense` is trained on the
cached features, without augmentation.
"""

import keras
import numpy as np

from keras_dino.evaluation.linear_classifier import build_linear_classifier
from keras_dino.evaluation.linear_probe import LinearProbe
from keras_dino.evaluation.linear_probe_schedule import EpochCosineDecay
from keras_dino.evaluation.linear_probe_schedule import (
    linear_probe_learning_rate,
)


def _fit(
    model,
    train,
    validation,
    num_train,
    epochs,
    batch_size,
    base_lr,
    num_classes,
    verbose,
):
    steps_per_epoch = -(-num_train // batch_size)
    schedule = EpochCosineDecay(
        linear_probe_learning_rate(batch_size, base_lr),
        steps_per_epoch,
        epochs,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="acc1"),
            keras.metrics.SparseTopKCategoricalAccuracy(
                k=min(5, num_classes), name="acc5"
            ),
        ],
    )
    fit_kwargs = {"epochs": epochs, "verbose": verbose}
    if isinstance(train, tuple):
        fit_kwargs.update(x=train[0], y=train[1], batch_size=batch_size)
        fit_kwargs["shuffle"] = True
    else:
        # A dataset shuffles itself (keras_dino.data.from_arrays).
        fit_kwargs.update(x=train, shuffle=False)
    history = model.fit(validation_data=validation, **fit_kwargs).history
    acc1 = [100.0 * a for a in history["val_acc1"]]
    acc5 = [100.0 * a for a in history["val_acc5"]]
    best = int(np.argmax(acc1))
    return {
        "best_top1": acc1[best],
        "best_top5": acc5[best],
        "best_epoch": best + 1,
        "final_top1": acc1[-1],
        "final_top5": acc5[-1],
        "history": history,
    }


def _check_epochs(epochs, batch_size):
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be positive; got {epochs} and "
            f"{batch_size}."
        )


def fit_linear_probe(
    probe,
    train_images,
    train_labels,
    val_images,
    val_labels,
    epochs=100,
    batch_size=128,
    base_learning_rate=0.001,
    image_size=None,
    crop_fraction=0.875,
    seed=0,
    verbose="auto",
):
    """Trains a `LinearProbe` on images with the DINO linear protocol.

    SGD (momentum 0.9, weight decay 0), learning rate
    `base_learning_rate * batch_size / 256` with a per-epoch cosine decay
    to 0, random-resized crop + flip on the training images, centre crop on
    the validation images; validation after every epoch.

    Args:
        probe: a `LinearProbe`.
        train_images: `(N, H, W, 3)` uint8 images (or float in [0, 1]).
        train_labels: `(N,)` integer labels.
        val_images: validation images, same format.
        val_labels: validation labels.
        epochs: int, 100 in the reference.
        batch_size: int, 256 in total (128 on each of 2 GPUs) in DINO's
            ViT-S runs; the learning rate scales with it.
        base_learning_rate: float, 0.001 in the reference.
        image_size: int, crop size; defaults to `backbone.image_size`.
        crop_fraction: float, validation centre-crop fraction.
        seed: int, seeds the augmentation.
        verbose: passed to `Model.fit`.

    Returns:
        A dict with `best_top1`, `best_top5` (percent, at the epoch with the
        best top-1), `best_epoch` (1-based), `final_top1`, `final_top5` and
        the Keras `history`.

    Example:
    >>> probe = build_linear_probe(backbone, 10)
    >>> result = fit_linear_probe(probe, x, y, x_val, y_val, epochs=1)
    >>> result["best_top1"]
    """
    if not isinstance(probe, LinearProbe):
        raise TypeError(f"Expected a LinearProbe; got {type(probe).__name__}.")
    _check_epochs(epochs, batch_size)
    if image_size is None:
        image_size = getattr(probe.backbone, "image_size", None)
        if image_size is None:
            raise ValueError("Pass image_size: the backbone has none.")
    from keras_dino import data

    train_labels = np.asarray(train_labels).astype("int64").reshape(-1)
    if len(train_images) != len(train_labels):
        raise ValueError(
            f"Got {len(train_labels)} train labels for {len(train_images)} "
            "train images."
        )
    train = data.from_arrays(
        train_images,
        train_labels,
        data.RandomResizedCropTransform(image_size, seed=seed),
        batch_size,
        with_labels=True,
        shuffle=True,
        seed=seed,
        drop_remainder=False,
    )
    val = data.labeled_dataset(
        (val_images, val_labels),
        image_size,
        batch_size=batch_size,
        crop_fraction=crop_fraction,
    )
    return _fit(
        probe,
        train,
        val,
        len(train_labels),
        epochs,
        batch_size,
        base_learning_rate,
        probe.num_classes,
        verbose,
    )


def fit_linear_classifier(
    train_features,
    train_labels,
    val_features,
    val_labels,
    num_classes=None,
    epochs=100,
    batch_size=128,
    base_learning_rate=0.001,
    classifier=None,
    verbose="auto",
):
    """Fast linear protocol: trains only the `Dense` on cached features.

    Same classifier, optimizer and schedule as `fit_linear_probe`, but on
    features precomputed once (no augmentation, which makes it a CPU-sized
    approximation of the reference protocol). Compute the features with
    `extract_features(probe.feature_extractor, images, normalize=False)`.
    The trained layer can be placed in a probe with
    `probe.classifier.set_weights(classifier.get_weights())`.

    Args:
        train_features: `(N, dim)` float features.
        train_labels: `(N,)` integer labels.
        val_features: `(M, dim)` features.
        val_labels: `(M,)` labels.
        num_classes: int; inferred from the labels when `None`.
        epochs: int.
        batch_size: int; the learning rate scales with it.
        base_learning_rate: float, 0.001 in the reference.
        classifier: optional `Dense` to train (e.g. `probe.classifier`);
            a new `build_linear_classifier` layer by default.
        verbose: passed to `Model.fit`.

    Returns:
        `(classifier, results)`: the trained `Dense` layer and the dict of
        `fit_linear_probe`.

    Example:
    >>> feats = extract_features(probe.feature_extractor, x, normalize=False)
    >>> val = extract_features(probe.feature_extractor, xv, normalize=False)
    >>> dense, result = fit_linear_classifier(feats, y, val, yv, epochs=100)
    """
    _check_epochs(epochs, batch_size)
    train_features = np.asarray(train_features, "float32")
    val_features = np.asarray(val_features, "float32")
    train_labels = np.asarray(train_labels).astype("int64").reshape(-1)
    val_labels = np.asarray(val_labels).astype("int64").reshape(-1)
    if train_features.ndim != 2 or val_features.ndim != 2:
        raise ValueError("Features must be 2-D (num_examples, dim).")
    if len(train_features) != len(train_labels) or len(val_features) != len(
        val_labels
    ):
        raise ValueError("Features and labels differ in length.")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    if classifier is None:
        classifier = build_linear_classifier(num_classes)
    inputs = keras.Input((train_features.shape[1],), name="features")
    model = keras.Model(inputs, classifier(inputs), name="linear_classifier")
    result = _fit(
        model,
        (train_features, train_labels),
        (val_features, val_labels),
        len(train_labels),
        epochs,
        batch_size,
        base_learning_rate,
        classifier.units,
        verbose,
    )
    return classifier, result
