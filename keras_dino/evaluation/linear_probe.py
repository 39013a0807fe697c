"""The linear probe model: frozen ViT features and a linear classifier.

Features are the CLS tokens of the last `n_last_blocks` blocks (each after
the final norm), concatenated; with `avgpool_patchtokens` the mean patch
token of the last block is interleaved with the CLS token as the reference
`eval_linear.py` does. Training lives in `linear_probe_training.py`.
"""

import keras
from keras import ops

from keras_dino.evaluation.linear_classifier import build_linear_classifier
from keras_dino.utils.serialization import with_deserialized_backbone


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
