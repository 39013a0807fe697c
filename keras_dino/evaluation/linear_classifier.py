"""The linear classifier of the linear probe and the reference's weights.

`build_linear_classifier` is the reference `LinearClassifier` (a `Dense`
with N(0, 0.01) weights and zero bias); `load_reference_linear_weights`
puts the official linear heads (`dino_*_linearweights.pth`) into it.
"""

import keras
import numpy as np


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
    dense = getattr(probe, "classifier", probe)
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
