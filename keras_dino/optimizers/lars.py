"""LARS exactly as the reference DINO's `utils.LARS`."""

import keras
from keras import ops

from keras_dino.optimizers.sgd import _check_float
from keras_dino.optimizers.sgd import _ScheduledDecayMomentumOptimizer


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


@keras.saving.register_keras_serializable(package="keras_dino")
class LARS(_ScheduledDecayMomentumOptimizer):
    """The reference DINO's `utils.LARS(params_groups)`.

    Per variable `p` with gradient `dp` (after the reference's per-variable
    `clip_gradients` when `clip_norm` is set):

        dp = dp * min(clip_norm / (||dp|| + 1e-6), 1)  # if clip_norm is set
        dp = dp + wd * p                               # decayed variables
        q = eta * ||p|| / ||dp||  if ||p|| > 0 and ||dp|| > 0  else 1
        dp = dp * q                                    # adapted variables
        mu = momentum * mu + dp                        # mu starts at zeros
        p = p - lr * mu

    Decayed variables are the reference's regularised group: `len(shape) >
    1` and a name not ending with `"bias"`. Adapted variables (the trust
    ratio `q`) are those with `len(shape) > 1`, whatever their name (the
    reference's `p.ndim != 1`; a 2-D "bias" is adapted but not decayed).
    Shape-`()` variables are treated like 1-D ones: neither decayed nor
    adapted (the reference would do both on a 0-D parameter; DINO has
    none).

    The weight decay is held in the float32 optimizer variable
    `scheduled_weight_decay`, created in `build()` from `weight_decay`; the
    DINO model assigns it every step from its schedule (assign it yourself
    in a custom loop). Keras's own decoupled `weight_decay` is off.

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        weight_decay: float, initial value of `scheduled_weight_decay`.
        momentum: float >= 0 (the reference's default 0.9).
        eta: float >= 0, the trust coefficient (the reference's 0.001).
        clip_norm: optional float > 0, per-variable gradient-norm clip as
            the reference's `clip_gradients`; None for no clipping.
        name: string, the optimizer's name.
        **kwargs: other `keras.optimizers.Optimizer` arguments, except
            `clipnorm`, `global_clipnorm` and `clipvalue` (use `clip_norm`).

    Raises:
        ValueError: for Keras clipping arguments, a schedule or non-number
            as `weight_decay`, or out-of-range values.
    """

    def __init__(
        self,
        learning_rate=5e-4,
        weight_decay=0.04,
        momentum=0.9,
        eta=0.001,
        clip_norm=None,
        name="lars",
        **kwargs,
    ):
        eta = _check_float("eta", eta)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            momentum=momentum,
            clip_norm=clip_norm,
            name=name,
            **kwargs,
        )
        self.eta = eta

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._adapt_mask = [len(v.shape) > 1 for v in var_list]

    def _direction(self, g, p, index):
        g = super()._direction(g, p, index)
        if self._adapt_mask[index]:
            param_norm = _norm(p)
            update_norm = _norm(g)
            # Divide by 1 where ||dp|| = 0 (that branch is not taken).
            safe_norm = ops.where(update_norm > 0, update_norm, 1.0)
            ratio = self.eta * param_norm / safe_norm
            one = ops.ones_like(param_norm)
            q = ops.where(
                param_norm > 0,
                ops.where(update_norm > 0, ratio, one),
                one,
            )
            g = g * q
        return g

    def get_config(self):
        config = super().get_config()
        config["eta"] = self.eta
        return config
