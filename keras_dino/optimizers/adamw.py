"""AdamW exactly as the reference DINO trains with it."""

import keras
from keras import ops

from keras_dino.optimizers.rules import clip_by_norm
from keras_dino.optimizers.rules import decay_mask
from keras_dino.optimizers.rules import refuse_keras_clipping


@keras.saving.register_keras_serializable(package="keras_dino")
class DINOAdamW(keras.optimizers.Optimizer):
    """PyTorch's AdamW with DINO's clipping and weight-decay exclusions.

    Differences from `keras.optimizers.AdamW`, each needed to match the
    reference numerically:

    * PyTorch's update: `p *= 1 - lr * wd`, then
      `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`
      (Keras adds `eps` before the bias correction of `v`).
    * `t` counts the updates of each variable, as PyTorch's per-parameter
      `step`: a variable that `DINO` kept frozen for the first epoch starts
      its bias correction when it thaws.
    * The weight decay is a variable, `scheduled_weight_decay`, that
      `DINO` sets every iteration from its `DINOSchedule` (0.04 -> 0.4 in
      the paper).
    * Biases and 1-D variables are never decayed.
    * Per-variable gradient-norm clipping as the reference's
      `clip_gradients`: `g *= clip / (||g|| + 1e-6)` when that factor is
      below 1. It runs inside the per-variable update, i.e. after the
      cross-replica gradient sum and after loss-scale unscaling.

    On the PyTorch backend the update runs as `torch._foreach_*` calls over
    all variables at once (`keras_dino/optimizers/torch_adamw.py`).

    Args:
        learning_rate: float or schedule (`DINOSchedule` sets it every
            iteration unless its `learning_rate` is `None`).
        weight_decay: float, the initial `scheduled_weight_decay`.
        beta_1: float.
        beta_2: float.
        epsilon: float, PyTorch's default 1e-8.
        clip_norm: optional float, per-variable gradient-norm clip (the
            reference: 3.0).
        **kwargs: other `keras.optimizers.Optimizer` arguments (not
            `clipnorm`, `global_clipnorm`, `clipvalue`).

    Example:
    ```python
    model.compile(
        optimizer=keras_dino.optimizers.DINOAdamW(clip_norm=3.0),
        schedule=keras_dino.schedules.DINOSchedule.paper(
            batch_size=64, steps_per_epoch=1000, epochs=100),
    )
    ```
    """

    # DINO writes its schedule's weight decay into `scheduled_weight_decay`.
    follows_weight_decay_schedule = True

    def __init__(
        self,
        learning_rate=5e-4,
        weight_decay=0.04,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        clip_norm=3.0,
        name="dino_adamw",
        **kwargs,
    ):
        refuse_keras_clipping("DINOAdamW", kwargs)
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if callable(weight_decay) or isinstance(weight_decay, dict):
            raise ValueError(
                "DINOAdamW's weight_decay is a float; schedule it with "
                "keras_dino.schedules.DINOSchedule(weight_decay=..., "
                "weight_decay_end=...) passed to DINO.compile."
            )
        self.initial_weight_decay = float(weight_decay)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.clip_norm = None if clip_norm is None else float(clip_norm)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        # PyTorch's per-parameter step count; named after the variable so
        # that DINO finds it among the variable's slots.
        self._steps = [
            self.add_variable(
                shape=(),
                initializer="zeros",
                dtype="float32",
                name=f"{v.path.replace('/', '_')}_step",
                aggregation="only_first_replica",
            )
            for v in var_list
        ]
        self._decay_mask = decay_mask(var_list)
        self.scheduled_weight_decay = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_weight_decay),
            dtype="float32",
            name="scheduled_weight_decay",
            aggregation="only_first_replica",
        )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "torch":
            # The same update as `update_step`, over all variables at once.
            from keras_dino.optimizers.torch_adamw import adamw_update

            adamw_update(self, grads, trainable_variables, learning_rate)
            return
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.clip_norm is not None:
            g = clip_by_norm(g, self.clip_norm)
        m_var, v_var = self._momentums[index], self._velocities[index]
        step_var = self._steps[index]
        step = ops.cast(step_var, dtype) + 1.0
        p = ops.convert_to_tensor(variable)
        if self._decay_mask[index]:
            wd = ops.cast(self.scheduled_weight_decay, dtype)
            p = p * (1.0 - lr * wd)
        new_m = m_var + (g - m_var) * (1.0 - self.beta_1)
        new_v = v_var * self.beta_2 + ops.square(g) * (1.0 - self.beta_2)
        bias1 = 1.0 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias2 = 1.0 - ops.power(ops.cast(self.beta_2, dtype), step)
        denom = ops.sqrt(new_v) / ops.sqrt(bias2) + self.epsilon
        self.assign(m_var, new_m)
        self.assign(v_var, new_v)
        self.assign(step_var, ops.cast(step, step_var.dtype))
        self.assign(variable, p - (lr / bias1) * new_m / denom)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.initial_weight_decay,
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "clip_norm": self.clip_norm,
            }
        )
        return config
