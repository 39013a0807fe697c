"""The reference DINO's per-variable rules, shared by its optimizers."""

from keras import ops


def decay_mask(variables):
    """The reference's rule: decay all but biases and 1-D (or 0-D) weights."""
    return [len(v.shape) > 1 and not v.name.endswith("bias") for v in variables]


def clip_by_norm(gradient, clip_norm):
    """The reference's `clip_gradients` for one parameter.

    `g *= clip_norm / (||g|| + 1e-6)` when that factor is below 1.
    """
    norm = ops.sqrt(ops.sum(ops.square(gradient)))
    coef = clip_norm / (norm + 1e-6)
    return gradient * ops.minimum(coef, 1.0)


def refuse_keras_clipping(name, kwargs):
    """Raises if Keras's own clipping arguments are given."""
    for key in ("clipnorm", "global_clipnorm", "clipvalue"):
        if kwargs.get(key) is not None:
            raise ValueError(
                f"{name} does its own per-variable clipping as the "
                f"reference; use clip_norm instead of {key}."
            )
