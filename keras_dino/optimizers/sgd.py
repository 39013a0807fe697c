"""SGD with momentum exactly as the reference DINO trains with it."""

import math
import numbers

import keras
from keras import ops

_KERAS_CLIPPING = ("clipnorm", "global_clipnorm", "clipvalue")


def _check_float(name, value, minimum=0.0, allow_none=False, strict=False):
    """Returns `value` as a float, refusing anything but a finite number."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        extra = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` must be a finite float {bound}{extra}; got {value!r}."
        )
    return float(value)


class _ScheduledDecayMomentumOptimizer(keras.optimizers.Optimizer):
    """Shared machinery of `DINOSGD` and `LARS` (the house protocol).

    * Keras's decoupled weight decay is off (`weight_decay=None` for the
      base class); the coupled decay of the reference lives in a float32
      scalar optimizer variable `scheduled_weight_decay`, initialised from
      the constructor's `weight_decay` and assigned by the DINO model at
      every step from its schedule.
    * Decay mask, as the reference's `get_params_groups`: only variables
      with `len(shape) > 1` whose name does not end with `"bias"`.
    * Per-variable gradient clipping `clip_norm` as the reference's
      `clip_gradients`.
    * One zero-initialised momentum slot per variable, named
      `<path with "/" replaced by "_">_momentum`.
    """

    def __init__(
        self,
        learning_rate,
        weight_decay,
        momentum,
        clip_norm,
        name,
        **kwargs,
    ):
        cls = type(self).__name__
        for key in _KERAS_CLIPPING:
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"{cls} clips each variable's gradient itself, as the "
                    f"reference's clip_gradients; pass `clip_norm` instead "
                    f"of `{key}`."
                )
            kwargs.pop(key, None)
        if callable(weight_decay) or isinstance(weight_decay, dict):
            raise ValueError(
                f"{cls} takes a float `weight_decay` (the initial value of "
                f"its `scheduled_weight_decay` variable); to schedule it, "
                f"assign `optimizer.scheduled_weight_decay` every step (the "
                f"DINO model does so from its schedule). Got {weight_decay!r}."
            )
        weight_decay = _check_float("weight_decay", weight_decay)
        momentum = _check_float("momentum", momentum)
        clip_norm = _check_float(
            "clip_norm", clip_norm, allow_none=True, strict=True
        )
        super().__init__(
            learning_rate=learning_rate, weight_decay=None, name=name, **kwargs
        )
        self._initial_weight_decay = weight_decay
        self.momentum = momentum
        self.clip_norm = clip_norm

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = self.add_optimizer_variables(var_list, "momentum")
        self._decay_mask = [
            len(v.shape) > 1 and not v.name.endswith("bias") for v in var_list
        ]
        self.scheduled_weight_decay = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(self._initial_weight_decay),
            dtype="float32",
            name="scheduled_weight_decay",
        )

    def _clipped(self, gradient, dtype):
        g = ops.cast(gradient, dtype)
        if self.clip_norm is not None:
            norm = ops.sqrt(ops.sum(ops.square(g)))
            coef = self.clip_norm / (norm + 1e-6)
            g = g * ops.minimum(coef, 1.0)
        return g

    def _direction(self, g, p, index):
        """The vector fed into the momentum buffer (coupled decay here)."""
        if self._decay_mask[index]:
            wd = ops.cast(self.scheduled_weight_decay, p.dtype)
            g = g + wd * p
        return g

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        p = ops.convert_to_tensor(variable)
        d = self._direction(self._clipped(gradient, dtype), p, index)
        m_var = self._momentums[index]
        m = ops.convert_to_tensor(m_var)
        new_m = ops.cast(self.momentum, dtype) * m + d
        self.assign(m_var, new_m)
        self.assign(variable, p - lr * new_m)

    def get_config(self):
        config = super().get_config()
        for key in _KERAS_CLIPPING:
            config.pop(key, None)
        config.update(
            {
                "weight_decay": self._initial_weight_decay,
                "momentum": self.momentum,
                "clip_norm": self.clip_norm,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_dino")
class DINOSGD(_ScheduledDecayMomentumOptimizer):
    """`torch.optim.SGD(params_groups, momentum=0.9)` as DINO uses it.

    The reference builds two parameter groups (regularised: not a bias and
    not 1-D, with the scheduled weight decay; not regularised: weight decay
    0) and sets each group's lr and weight decay at every iteration. Per
    variable `p` with gradient `g` this is PyTorch's SGD with momentum
    (dampening 0, no Nesterov):

        g = g * min(clip_norm / (||g|| + 1e-6), 1)   # if clip_norm is set
        d = g + wd * p                               # decayed variables only
        buf = momentum * buf + d                     # buf starts at zeros
        p = p - lr * buf

    A zero-initialised buffer gives PyTorch's first step `buf = d` exactly.

    Weight decay is coupled (added to the gradient, hence also carried by
    the momentum) and held in the float32 optimizer variable
    `scheduled_weight_decay`, created in `build()` from `weight_decay`; the
    DINO model assigns it every step from its schedule (assign it yourself
    in a custom loop). Keras's own decoupled `weight_decay` is off. Only
    variables with `len(shape) > 1` whose name does not end with `"bias"`
    are decayed; 1-D and shape-`()` variables never are (the reference would
    put a 0-D parameter in its regularised group; DINO has none).

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule (the
            reference's `--lr` default 5e-4 before its batch-size scaling).
        weight_decay: float, initial value of `scheduled_weight_decay`.
        momentum: float >= 0, PyTorch's `momentum` (0.9 in the reference).
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
        clip_norm=None,
        name="dino_sgd",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            momentum=momentum,
            clip_norm=clip_norm,
            name=name,
            **kwargs,
        )
