"""AdamW exactly as the reference DINO trains with it."""

import keras
from keras import ops

from keras_dino.schedules import CosineSchedule


@keras.saving.register_keras_serializable(package="keras_dino")
class DINOAdamW(keras.optimizers.Optimizer):
    """PyTorch's AdamW with DINO's clipping, decay exclusions and freezing.

    Differences from `keras.optimizers.AdamW`, each needed to match the
    reference numerically:

    * PyTorch's update: `p *= 1 - lr * wd`, then
      `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`
      (Keras adds `eps` before the bias correction of `v`).
    * `weight_decay` may be a schedule of the iteration (DINO: cosine
      0.04 -> 0.4).
    * Biases and 1-D variables are never decayed.
    * Per-variable gradient-norm clipping as the reference's
      `clip_gradients`: `g *= clip / (||g|| + 1e-6)` when that factor is
      below 1. It runs inside the per-variable update, i.e. after the
      cross-replica gradient sum under `tf.distribute`, as in DDP.
    * Variables registered with `freeze_variables` are not touched at all
      (no step, no decay, no moment update) during the first
      `frozen_steps` iterations, and their Adam step count starts when they
      thaw, as when PyTorch skips a parameter whose gradient is `None`.

    Args:
        learning_rate: float or schedule.
        weight_decay: float or schedule (callable on the iteration).
        beta_1: float.
        beta_2: float.
        epsilon: float, PyTorch's default 1e-8.
        clip_norm: optional float, per-variable gradient-norm clip.
        frozen_steps: int, iterations during which frozen variables rest.
        **kwargs: other `keras.optimizers.Optimizer` arguments (not
            `clipnorm`, `global_clipnorm`, `weight_decay`).
    """

    def __init__(
        self,
        learning_rate=5e-4,
        weight_decay=0.04,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        clip_norm=3.0,
        frozen_steps=0,
        name="dino_adamw",
        **kwargs,
    ):
        for key in ("clipnorm", "global_clipnorm", "clipvalue"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"DINOAdamW does its own per-variable clipping; use "
                    f"clip_norm instead of {key}."
                )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if isinstance(weight_decay, dict):
            weight_decay = keras.saving.deserialize_keras_object(weight_decay)
        self.weight_decay_schedule = weight_decay
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.clip_norm = clip_norm
        self._initial_frozen_steps = int(frozen_steps)
        # Keys, not variables: a list of variables here would be tracked
        # as optimizer state.
        self._frozen_keys = frozenset()

    def freeze_variables(self, variables):
        """Registers variables that rest during the first `frozen_steps`."""
        self._frozen_keys = frozenset(self._var_key(v) for v in variables)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        self._decay_mask = [
            len(v.shape) > 1 and not v.name.endswith("bias") for v in var_list
        ]
        self.frozen_steps = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(self._initial_frozen_steps),
            dtype="int32",
            name="frozen_steps",
        )

    def weight_decay_at(self, step):
        """The weight decay at an iteration."""
        schedule = self.weight_decay_schedule
        if callable(schedule):
            return schedule(step)
        return schedule

    def learning_rate_at(self, step):
        """The learning rate at an iteration."""
        lr = self._learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return lr(step)
        return lr

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.clip_norm is not None:
            norm = ops.sqrt(ops.sum(ops.square(g)))
            coef = self.clip_norm / (norm + 1e-6)
            g = g * ops.minimum(coef, 1.0)
        m_var, v_var = self._momentums[index], self._velocities[index]
        m, v = ops.convert_to_tensor(m_var), ops.convert_to_tensor(v_var)
        old_p = ops.convert_to_tensor(variable)
        step = ops.cast(self.iterations + 1, dtype)
        frozen = self._var_key(variable) in self._frozen_keys
        if frozen:
            active = self.iterations >= self.frozen_steps
            step = step - ops.cast(self.frozen_steps, dtype)
            step = ops.maximum(step, 1.0)
        p = old_p
        if self._decay_mask[index] and self.weight_decay_schedule is not None:
            wd = ops.cast(self.weight_decay_at(self.iterations), dtype)
            p = p * (1.0 - lr * wd)
        new_m = m + (g - m) * (1.0 - self.beta_1)
        new_v = v * self.beta_2 + ops.square(g) * (1.0 - self.beta_2)
        bias1 = 1.0 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias2 = 1.0 - ops.power(ops.cast(self.beta_2, dtype), step)
        denom = ops.sqrt(new_v) / ops.sqrt(bias2) + self.epsilon
        new_p = p - (lr / bias1) * new_m / denom
        if frozen:
            new_p = ops.where(active, new_p, old_p)
            new_m = ops.where(active, new_m, m)
            new_v = ops.where(active, new_v, v)
        self.assign(m_var, new_m)
        self.assign(v_var, new_v)
        self.assign(variable, new_p)

    def get_config(self):
        config = super().get_config()
        wd = self.weight_decay_schedule
        if isinstance(wd, keras.optimizers.schedules.LearningRateSchedule):
            wd = keras.saving.serialize_keras_object(wd)
        config.update(
            {
                "weight_decay": wd,
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "clip_norm": self.clip_norm,
                "frozen_steps": self._initial_frozen_steps,
            }
        )
        return config


def dino_adamw(
    batch_size,
    steps_per_epoch,
    epochs,
    base_learning_rate=5e-4,
    min_learning_rate=1e-6,
    warmup_epochs=10,
    weight_decay=0.04,
    weight_decay_end=0.4,
    clip_norm=3.0,
    freeze_last_layer_epochs=1,
):
    """The reference DINO optimiser for a given run length.

    Learning rate `base_learning_rate * batch_size / 256`, linear warm-up
    from 0 over `warmup_epochs`, then per-iteration cosine to
    `min_learning_rate`; weight decay per-iteration cosine from
    `weight_decay` to `weight_decay_end`; per-variable clipping at
    `clip_norm`; the head's last layer frozen for
    `freeze_last_layer_epochs` (registered by `DINO.compile`).

    Args:
        batch_size: int, the global batch size.
        steps_per_epoch: int, iterations per epoch.
        epochs: int, total epochs of the run.

    Returns:
        A `DINOAdamW`.
    """
    total = int(steps_per_epoch) * int(epochs)
    warmup = min(int(warmup_epochs) * int(steps_per_epoch), total)
    learning_rate = CosineSchedule(
        base_learning_rate * batch_size / 256.0,
        min_learning_rate,
        total_steps=total,
        warmup_steps=warmup,
    )
    decay = CosineSchedule(weight_decay, weight_decay_end, total_steps=total)
    return DINOAdamW(
        learning_rate=learning_rate,
        weight_decay=decay,
        clip_norm=clip_norm,
        frozen_steps=int(freeze_last_layer_epochs) * int(steps_per_epoch),
    )
