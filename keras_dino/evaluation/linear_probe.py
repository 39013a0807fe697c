"""Linear probe on frozen DINO features (the reference `eval_linear.py`).

Features are the CLS tokens of the last `n_last_blocks` blocks (each after
the final norm), concatenated; with `avgpool_patchtokens` the mean patch
token of the last block is interleaved with the CLS token as the reference
does. A `Dense(num_classes)` (weights normal(0, 0.01), bias 0) is trained on
top with SGD (momentum 0.9, no weight decay), learning rate
`0.001 * batch_size / 256` and a cosine decay to 0 that, as in the
reference's `CosineAnnealingLR`, changes once per *epoch*. Training images
get a random-resized crop and a horizontal flip; validation images a centre
crop. The best validation top-1 over the epochs is reported.

`fit_linear_classifier` is the fast variant for CPUs: the backbone runs
once (`extract_features` on `LinearProbe.feature_extractor`) and only the
`Dense` is trained on the cached features, without augmentation.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_dino.evaluation.features import IMAGENET_MEAN
from keras_dino.evaluation.features import IMAGENET_STD
from keras_dino.evaluation.features import preprocess_images
from keras_dino.utils.serialization import with_deserialized_backbone


def build_linear_classifier(num_classes, name="linear"):
    """The reference `LinearClassifier`: `Dense` with N(0, 0.01), bias 0.

    Args:
        num_classes: int, number of output logits.
        name: layer name.

    Returns:
        An unbuilt `keras.layers.Dense`.

    Example:
    >>> head = build_linear_classifier(10)
    >>> head(np.zeros((2, 384))).shape
    (2, 10)
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive; got {num_classes}.")
    return keras.layers.Dense(
        int(num_classes),
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
        bias_initializer="zeros",
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_dino")
class ProbeFeatureExtractor(keras.Model):
    """Linear-probe features of a frozen ViT backbone.

    `concat([t[:, 0] for t in backbone.get_intermediate_layers(x, n)])`,
    width `n_last_blocks * hidden_dim`. With `avgpool_patchtokens` (which
    the reference only supports for `n_last_blocks=1`) the mean of the last
    block's patch tokens is added, interleaved with the CLS token exactly as
    the reference's `cat((cls[..., None], avg[..., None]), -1).reshape`,
    width `2 * hidden_dim`, so that official linear heads load as is.

    Args:
        backbone: a `ViTBackbone` (anything with `hidden_dim` and
            `get_intermediate_layers`).
        n_last_blocks: int, number of last blocks whose CLS tokens are
            concatenated (4 for ViT-S in DINO, 1 for ViT-B).
        avgpool_patchtokens: bool, append the averaged patch tokens (True
            for ViT-B in DINO).
        **kwargs: standard `keras.Model` arguments.

    Example:
    >>> backbone = ViTBackbone.from_variant("ViT-T/16")
    >>> extractor = ProbeFeatureExtractor(backbone, n_last_blocks=4)
    >>> extractor(np.zeros((1, 224, 224, 3))).shape
    (1, 768)
    """

    def __init__(
        self, backbone, n_last_blocks=4, avgpool_patchtokens=False, **kwargs
    ):
        super().__init__(**kwargs)
        if not hasattr(backbone, "get_intermediate_layers") or not hasattr(
            backbone, "hidden_dim"
        ):
            raise TypeError(
                "backbone must provide `hidden_dim` and "
                "`get_intermediate_layers` (e.g. a ViTBackbone); got "
                f"{type(backbone).__name__}."
            )
        num_layers = getattr(backbone, "num_layers", None)
        if n_last_blocks < 1 or (
            num_layers is not None and n_last_blocks > num_layers
        ):
            raise ValueError(
                f"n_last_blocks must be between 1 and the backbone's "
                f"num_layers ({num_layers}); got {n_last_blocks}."
            )
        if avgpool_patchtokens and n_last_blocks != 1:
            raise ValueError(
                "avgpool_patchtokens=True needs n_last_blocks=1, as in the "
                "reference eval_linear.py (its interleaving of CLS and "
                f"pooled tokens is only defined there); got {n_last_blocks}."
            )
        self.backbone = backbone
        self.n_last_blocks = int(n_last_blocks)
        self.avgpool_patchtokens = bool(avgpool_patchtokens)
        self.output_dim = backbone.hidden_dim * (
            self.n_last_blocks + int(self.avgpool_patchtokens)
        )

    def call(self, images, training=None):
        outputs = self.backbone.get_intermediate_layers(
            images, self.n_last_blocks, training=False
        )
        features = ops.concatenate([x[:, 0] for x in outputs], axis=-1)
        if self.avgpool_patchtokens:
            pooled = ops.mean(outputs[-1][:, 1:], axis=1)
            features = ops.reshape(
                ops.stack([features, pooled], axis=-1),
                (-1, self.output_dim),
            )
        return features

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "n_last_blocks": self.n_last_blocks,
                "avgpool_patchtokens": self.avgpool_patchtokens,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_deserialized_backbone(config))


@keras.saving.register_keras_serializable(package="keras_dino")
class LinearProbe(keras.Model):
    """A frozen ViT backbone with a trainable linear classifier on top.

    The backbone always runs with `training=False` and behind
    `stop_gradient`, and is marked non-trainable, so `fit` only updates the
    `Dense` classifier (`build_linear_classifier`).

    Args:
        backbone: a `ViTBackbone`.
        num_classes: int, number of classes.
        n_last_blocks: int, CLS tokens of this many last blocks are
            concatenated.
        avgpool_patchtokens: bool, interleave the last block's mean patch
            token (requires `n_last_blocks=1`).
        **kwargs: standard `keras.Model` arguments.

    Example:
    >>> backbone = ViTBackbone.from_variant("ViT-S/16")
    >>> probe = build_linear_probe(backbone, num_classes=1000)
    >>> probe(np.zeros((2, 224, 224, 3))).shape
    (2, 1000)
    """

    def __init__(
        self,
        backbone,
        num_classes,
        n_last_blocks=4,
        avgpool_patchtokens=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.feature_extractor = ProbeFeatureExtractor(
            backbone,
            n_last_blocks=n_last_blocks,
            avgpool_patchtokens=avgpool_patchtokens,
            name="feature_extractor",
        )
        self.feature_extractor.trainable = False
        self.classifier = build_linear_classifier(num_classes)
        self.classifier.build((None, self.feature_extractor.output_dim))
        self.num_classes = int(num_classes)
        self.built = True

    @property
    def backbone(self):
        return self.feature_extractor.backbone

    @property
    def n_last_blocks(self):
        return self.feature_extractor.n_last_blocks

    @property
    def avgpool_patchtokens(self):
        return self.feature_extractor.avgpool_patchtokens

    def call(self, images, training=None):
        features = ops.stop_gradient(self.feature_extractor(images))
        return self.classifier(features)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes,
                "n_last_blocks": self.n_last_blocks,
                "avgpool_patchtokens": self.avgpool_patchtokens,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_deserialized_backbone(config))


def build_linear_probe(
    backbone, num_classes, n_last_blocks=4, avgpool_patchtokens=False
):
    """Builds a `LinearProbe` (see its docstring).

    Example:
    >>> probe = build_linear_probe(backbone, 10, n_last_blocks=4)
    """
    return LinearProbe(
        backbone,
        num_classes,
        n_last_blocks=n_last_blocks,
        avgpool_patchtokens=avgpool_patchtokens,
    )


def linear_probe_learning_rate(batch_size, base_learning_rate=0.001):
    """The reference scaling rule: `base_learning_rate * batch_size / 256`."""
    return base_learning_rate * batch_size / 256.0


@keras.saving.register_keras_serializable(package="keras_dino")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay that changes once per epoch (`CosineAnnealingLR`).

    `lr(epoch) = final + (initial - final) * (1 + cos(pi * epoch /
    epochs)) / 2` with `epoch = step // steps_per_epoch`, so epoch 0 trains
    at `initial_learning_rate` and the last epoch at a small positive rate.

    Args:
        initial_learning_rate: float.
        steps_per_epoch: int, optimizer steps per epoch.
        epochs: int, `T_max` of the cosine.
        final_learning_rate: float, `eta_min` (0 in the reference).

    Example:
    >>> lr = EpochCosineDecay(0.001, steps_per_epoch=100, epochs=10)
    >>> optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    """

    def __init__(
        self,
        initial_learning_rate,
        steps_per_epoch,
        epochs,
        final_learning_rate=0.0,
    ):
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(
                "steps_per_epoch and epochs must be positive; got "
                f"{steps_per_epoch} and {epochs}."
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.final_learning_rate = float(final_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = ops.floor(step / self.steps_per_epoch)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * epoch / self.epochs))
        return self.final_learning_rate + cosine * (
            self.initial_learning_rate - self.final_learning_rate
        )

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "final_learning_rate": self.final_learning_rate,
        }


def random_resized_crop_box(
    height, width, rng, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)
):
    """torchvision's `RandomResizedCrop.get_params`: `(top, left, h, w)`.

    Area uniform in `scale`, aspect ratio log-uniform in `ratio` (in
    pixels), up to 10 tries, then a centre crop clamped to `ratio`.

    Args:
        height: int, image height.
        width: int, image width.
        rng: a `numpy.random.Generator`.
        scale: `(min, max)` fraction of the image area.
        ratio: `(min, max)` aspect ratio (width / height).

    Returns:
        `(top, left, crop_height, crop_width)` ints.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_uint8(images):
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        return np.clip(np.round(images * 255.0), 0, 255).astype("uint8")
    raise ValueError(f"Images must be uint8 or float; got {images.dtype}.")


class LinearProbeImages(keras.utils.PyDataset):
    """Batches of augmented images for linear-probe training.

    Training: random-resized crop (torchvision parameters, bilinear
    resize with Pillow as torchvision does on PIL images), horizontal flip
    with probability 0.5, shuffling every epoch. Evaluation: centre crop of
    `crop_fraction` and bicubic resize (`preprocess_images`). Both end with
    ImageNet normalisation.

    Args:
        images: `(num_images, height, width, 3)` uint8 (or float in [0, 1]).
        labels: `(num_images,)` integer labels.
        batch_size: int.
        image_size: int, output side.
        training: bool, augment and shuffle.
        crop_fraction: float, centre-crop fraction for evaluation.
        seed: int, seeds the crops, flips and shuffling.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        image_size,
        training,
        crop_fraction=0.875,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images = _to_uint8(images)
        self.labels = np.asarray(labels).astype("int64").reshape(-1)
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(
                "Expected images (N, H, W, 3) and N labels; got "
                f"{self.images.shape} and {self.labels.shape}."
            )
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.training = bool(training)
        self.crop_fraction = float(crop_fraction)
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.images))
        if self.training:
            self.rng.shuffle(self.order)

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def on_epoch_end(self):
        if self.training:
            self.rng.shuffle(self.order)

    def _augment(self, image):
        from PIL import Image

        top, left, h, w = random_resized_crop_box(*image.shape[:2], self.rng)
        pil = Image.fromarray(image).resize(
            (self.image_size, self.image_size),
            Image.BILINEAR,
            box=(left, top, left + w, top + h),
        )
        out = np.asarray(pil)
        if self.rng.random() < 0.5:
            out = out[:, ::-1]
        return out

    def __getitem__(self, index):
        idx = self.order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        images, labels = self.images[idx], self.labels[idx]
        if self.training:
            images = np.stack([self._augment(img) for img in images])
            images = (images.astype("float32") / 255.0 - IMAGENET_MEAN) / (
                IMAGENET_STD
            )
            return images.astype("float32"), labels
        images = preprocess_images(
            images, self.image_size, crop_fraction=self.crop_fraction
        )
        return images, labels


def _fit(
    model, train, validation, epochs, batch_size, base_lr, num_classes, verbose
):
    steps_per_epoch = len(train) if hasattr(train, "__len__") else None
    if isinstance(train, tuple):
        steps_per_epoch = -(-len(train[0]) // batch_size)
    if not steps_per_epoch:
        raise ValueError("Could not infer the number of steps per epoch.")
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
        fit_kwargs["x"] = train
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
    train = LinearProbeImages(
        train_images, train_labels, batch_size, image_size, True, seed=seed
    )
    val = LinearProbeImages(
        val_images,
        val_labels,
        batch_size,
        image_size,
        False,
        crop_fraction=crop_fraction,
    )
    return _fit(
        probe,
        train,
        val,
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
        epochs,
        batch_size,
        base_learning_rate,
        classifier.units,
        verbose,
    )
    return classifier, result


def load_reference_linear_weights(probe, checkpoint):
    """Loads a reference linear head (e.g. `dino_deitsmall16_linearweights`).

    The reference `eval_linear.py` saves `{"state_dict": {...}}` with the
    keys `module.linear.weight` `(num_classes, dim)` and
    `module.linear.bias`; the weight is transposed into the Keras kernel.
    The probe must be built with the matching `n_last_blocks` and
    `avgpool_patchtokens` (4 / False for ViT-S, 1 / True for ViT-B).

    Args:
        probe: a `LinearProbe`, or the `Dense` classifier itself.
        checkpoint: a path read with `keras_dino.weights.load_weights_file`
            (no pickle code runs), or an already loaded dict of arrays.

    Returns:
        The classifier layer, with the loaded weights.

    Example:
    >>> probe = build_linear_probe(backbone, 1000, n_last_blocks=4)
    >>> load_reference_linear_weights(
    ...     probe, "dino_deitsmall16_linearweights.pth"
    ... )
    """
    dense = probe.classifier if isinstance(probe, LinearProbe) else probe
    if not isinstance(dense, keras.layers.Dense) or not dense.built:
        raise TypeError("Expected a LinearProbe or a built Dense layer.")
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        from keras_dino.weights import load_weights_file

        state, _ = load_weights_file(checkpoint)
    state = state.get("state_dict", state)
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
    }
    missing = {"linear.weight", "linear.bias"} - set(state)
    if missing:
        raise ValueError(
            f"The checkpoint has no {sorted(missing)}; its keys are "
            f"{sorted(state)[:10]}."
        )
    weight = np.asarray(state["linear.weight"], "float32")
    bias = np.asarray(state["linear.bias"], "float32")
    if weight.T.shape != tuple(dense.kernel.shape) or bias.shape != tuple(
        dense.bias.shape
    ):
        raise ValueError(
            f"Linear weights {weight.shape} (classes, dim) do not fit the "
            f"classifier kernel {tuple(dense.kernel.shape)} (dim, classes); "
            "check num_classes, n_last_blocks and avgpool_patchtokens."
        )
    dense.kernel.assign(weight.T)
    dense.bias.assign(bias)
    return dense
