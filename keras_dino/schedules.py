"""Schedules of the reference DINO: `utils.cosine_scheduler` and the run's.

`CosineSchedule` is the reference's per-iteration warm-up + cosine.
`DINOSchedule` owns every value of a DINO run that changes with the
iteration: learning rate, weight decay, teacher momentum, teacher
temperature, center momentum and the last-layer freeze.
"""

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dino")
class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then cosine decay, one value per iteration.

    Steps `0 .. warmup_steps - 1` take `linspace(warmup_start_value,
    base_value, warmup_steps)` (so the last warm-up step already equals
    `base_value`); step `s >= warmup_steps` takes
    `final + 0.5 * (base - final) * (1 + cos(pi * (s - W) / (T - W)))`, so
    `final_value` itself is never reached. Steps past the end keep the last
    value. Usable as a Keras learning-rate schedule and as a plain function
    of an integer step.

    Args:
        base_value: float, value after warm-up.
        final_value: float, value the cosine tends to.
        total_steps: int, total number of iterations `T`.
        warmup_steps: int, number of warm-up iterations `W`.
        warmup_start_value: float, value at step 0 when warming up.

    Example:
    >>> lr = CosineSchedule(5e-4, 1e-6, total_steps=1000, warmup_steps=100)
    >>> float(lr(99))
    0.0005
    """

    def __init__(
        self,
        base_value,
        final_value,
        total_steps,
        warmup_steps=0,
        warmup_start_value=0.0,
    ):
        total_steps, warmup_steps = int(total_steps), int(warmup_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}], "
                f"got {warmup_steps}."
            )
        self.base_value = float(base_value)
        self.final_value = float(final_value)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_value = float(warmup_start_value)

    def numpy(self):
        """The whole schedule as a float64 array (the reference's array)."""
        return np.array([self.value_at(s) for s in range(self.total_steps)])

    def value_at(self, step):
        """The value at a Python integer step, in float64."""
        step = min(max(int(step), 0), self.total_steps - 1)
        w, t = self.warmup_steps, self.total_steps
        if step < w:
            if w == 1:
                return self.warmup_start_value
            frac = step / (w - 1)
            return self.warmup_start_value + frac * (
                self.base_value - self.warmup_start_value
            )
        progress = (step - w) / (t - w)
        return self.final_value + 0.5 * (self.base_value - self.final_value) * (
            1.0 + math.cos(math.pi * progress)
        )

    def __call__(self, step):
        if isinstance(step, (int, np.integer)):
            return self.value_at(step)
        step = ops.cast(step, "float32")
        step = ops.clip(step, 0.0, float(self.total_steps - 1))
        w, t = float(self.warmup_steps), float(self.total_steps)
        warm_span = max(self.warmup_steps - 1, 1)
        warm = self.warmup_start_value + (step / warm_span) * (
            self.base_value - self.warmup_start_value
        )
        progress = (step - w) / max(t - w, 1.0)
        cosine = self.final_value + 0.5 * (
            self.base_value - self.final_value
        ) * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < w, warm, cosine)

    def get_config(self):
        return {
            "base_value": self.base_value,
            "final_value": self.final_value,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_value": self.warmup_start_value,
        }


def _check_positive_int(name, value):
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_range(name, value, low, high, low_open=False):
    value = float(value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(
            f"{name} must be in {bracket}{low}, {high}], got {value}."
        )
    return value


@keras.saving.register_keras_serializable(package="keras_dino")
class DINOSchedule:
    """Every per-iteration value of a DINO run, as one object.

    Defined over the whole run (`epochs` x `steps_per_epoch` iterations)
    and evaluated inside the compiled training step from the model's
    iteration counter (`DINO.iteration`), which is saved with the model.
    So `fit` in a loop, `fit(initial_epoch=...)`, `BackupAndRestore`, the
    recipe's checkpoints and a `.keras` reload all continue exactly where
    an uninterrupted run would be. Pass it to `DINO.compile`.

    Per iteration `s` (epoch `e = s // steps_per_epoch`), as the reference:

    * learning rate: `CosineSchedule(learning_rate, min_learning_rate, T,
      warmup_epochs * steps_per_epoch)` (linear warm-up from 0);
    * weight decay: `CosineSchedule(weight_decay, weight_decay_end, T)`;
    * teacher momentum: `CosineSchedule(teacher_momentum,
      teacher_momentum_end, T)`, used for the EMA after step `s`;
    * teacher temperature, per epoch: `linspace(warmup_teacher_temperature,
      teacher_temperature, warmup_teacher_temperature_epochs)[e]`, then
      `teacher_temperature`;
    * center momentum: constant;
    * the head's last layer is frozen (no update, optimizer slots
      untouched) while `e < freeze_last_layer_epochs`.

    Iterations past the end keep the last value. `learning_rate=None` or
    `weight_decay=None` leave that value to the optimizer (its own float or
    schedule).

    Args:
        steps_per_epoch: int, iterations per epoch.
        epochs: int, epochs of the whole run.
        learning_rate: float, the peak learning rate (already scaled by
            the batch size; see `DINOSchedule.paper`), or `None`.
        min_learning_rate: float, the value the cosine tends to.
        warmup_epochs: int, epochs of linear learning-rate warm-up
            (default: the paper's 10, or the whole run if shorter).
        weight_decay: float or `None`, weight decay at iteration 0.
        weight_decay_end: float, the value the weight-decay cosine tends
            to (default: `weight_decay`, i.e. constant).
        teacher_momentum: float in [0, 1], EMA momentum at iteration 0.
        teacher_momentum_end: float in [0, 1], the value it tends to.
        teacher_temperature: float > 0, after the warm-up.
        warmup_teacher_temperature: float > 0, at epoch 0 (default:
            `teacher_temperature`).
        warmup_teacher_temperature_epochs: int, epochs of linear warm-up.
        center_momentum: float in [0, 1].
        freeze_last_layer_epochs: int, epochs during which the head's last
            layer is not updated.

    Example:
    >>> schedule = DINOSchedule.paper(
    ...     batch_size=64, steps_per_epoch=100, epochs=10, warmup_epochs=1)
    >>> round(float(schedule.learning_rate(99)), 6)
    0.000125
    """

    def __init__(
        self,
        steps_per_epoch,
        epochs,
        learning_rate=5e-4,
        min_learning_rate=1e-6,
        warmup_epochs=None,
        weight_decay=0.04,
        weight_decay_end=None,
        teacher_momentum=0.996,
        teacher_momentum_end=1.0,
        teacher_temperature=0.04,
        warmup_teacher_temperature=None,
        warmup_teacher_temperature_epochs=0,
        center_momentum=0.9,
        freeze_last_layer_epochs=1,
    ):
        self.steps_per_epoch = _check_positive_int(
            "steps_per_epoch", steps_per_epoch
        )
        self.epochs = _check_positive_int("epochs", epochs)
        total = self.steps_per_epoch * self.epochs
        if warmup_epochs is None:
            warmup_epochs = min(10, self.epochs)
        self.warmup_epochs = int(warmup_epochs)
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"warmup_epochs ({warmup_epochs}) must be in [0, epochs="
                f"{self.epochs}]; lower the learning-rate warm-up or train "
                "longer."
            )
        self.learning_rate = (
            None
            if learning_rate is None
            else _check_range("learning_rate", learning_rate, 0.0, math.inf)
        )
        self.min_learning_rate = float(min_learning_rate)
        self.weight_decay = (
            None
            if weight_decay is None
            else _check_range("weight_decay", weight_decay, 0.0, math.inf)
        )
        if weight_decay_end is None:
            weight_decay_end = weight_decay
        self.weight_decay_end = (
            None
            if weight_decay_end is None
            else _check_range(
                "weight_decay_end", weight_decay_end, 0.0, math.inf
            )
        )
        if (self.weight_decay is None) != (self.weight_decay_end is None):
            raise ValueError(
                "weight_decay_end needs weight_decay (None leaves the decay "
                "to the optimizer)."
            )
        self.teacher_momentum = _check_range(
            "teacher_momentum", teacher_momentum, 0.0, 1.0
        )
        self.teacher_momentum_end = _check_range(
            "teacher_momentum_end", teacher_momentum_end, 0.0, 1.0
        )
        self.teacher_temperature = _check_range(
            "teacher_temperature", teacher_temperature, 0.0, math.inf, True
        )
        if warmup_teacher_temperature is None:
            warmup_teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = _check_range(
            "warmup_teacher_temperature",
            warmup_teacher_temperature,
            0.0,
            math.inf,
            True,
        )
        self.warmup_teacher_temperature_epochs = int(
            warmup_teacher_temperature_epochs
        )
        if not 0 <= self.warmup_teacher_temperature_epochs <= self.epochs:
            raise ValueError(
                "warmup_teacher_temperature_epochs "
                f"({warmup_teacher_temperature_epochs}) must be in [0, "
                f"epochs={self.epochs}]; lower the teacher-temperature "
                "warm-up or train longer."
            )
        self.center_momentum = _check_range(
            "center_momentum", center_momentum, 0.0, 1.0
        )
        self.freeze_last_layer_epochs = int(freeze_last_layer_epochs)
        if self.freeze_last_layer_epochs < 0:
            raise ValueError(
                "freeze_last_layer_epochs must be >= 0, got "
                f"{freeze_last_layer_epochs}."
            )
        self.total_steps = total
        self._lr = (
            None
            if self.learning_rate is None
            else CosineSchedule(
                self.learning_rate,
                self.min_learning_rate,
                total_steps=total,
                warmup_steps=self.warmup_epochs * self.steps_per_epoch,
            )
        )
        self._wd = (
            None
            if self.weight_decay is None
            else CosineSchedule(
                self.weight_decay, self.weight_decay_end, total_steps=total
            )
        )
        self._momentum = CosineSchedule(
            self.teacher_momentum,
            self.teacher_momentum_end,
            total_steps=total,
        )

    @classmethod
    def paper(cls, batch_size, steps_per_epoch, epochs, **overrides):
        """The reference's defaults for a run of `epochs`.

        Learning rate `5e-4 * batch_size / 256` (override `learning_rate`
        with the unscaled base, it is scaled the same way), warm-up 10
        epochs (at most the run), min 1e-6; weight decay 0.04 -> 0.4;
        teacher momentum 0.996 -> 1; teacher temperature 0.04; center
        momentum 0.9; last layer frozen for 1 epoch.

        Args:
            batch_size: int, the global batch size.
            steps_per_epoch: int.
            epochs: int.
            **overrides: any other `DINOSchedule` argument.
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        base = overrides.pop("learning_rate", 5e-4)
        values = {
            "learning_rate": base * batch_size / 256.0,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
        }
        values.update(overrides)
        return cls(steps_per_epoch, epochs, **values)

    # --- values at an iteration (tensor or int) -------------------------

    def epoch(self, step):
        """The epoch of an iteration, clamped to the run."""
        step = ops.cast(step, "int32")
        return ops.minimum(step // self.steps_per_epoch, self.epochs - 1)

    def learning_rate_at(self, step):
        """The learning rate of iteration `step` (needs `learning_rate`)."""
        return self._lr(_as_tensor(step))

    def weight_decay_at(self, step):
        """The weight decay of iteration `step` (needs `weight_decay`)."""
        return self._wd(_as_tensor(step))

    def teacher_momentum_at(self, step):
        """The teacher EMA momentum used after iteration `step`."""
        return self._momentum(_as_tensor(step))

    def teacher_temperature_at(self, step):
        """The teacher temperature of the epoch of iteration `step`."""
        epoch = ops.cast(self.epoch(step), "float32")
        warm, value = self.warmup_teacher_temperature, self.teacher_temperature
        epochs = self.warmup_teacher_temperature_epochs
        span = max(epochs - 1, 1)
        warming = warm + (value - warm) * epoch / span
        return ops.where(epoch < epochs, warming, ops.cast(value, "float32"))

    def center_momentum_at(self, step):
        """The center momentum of iteration `step` (constant)."""
        del step
        return ops.convert_to_tensor(self.center_momentum, "float32")

    def last_layer_frozen_at(self, step):
        """Whether the head's last layer rests at iteration `step`."""
        step = ops.cast(step, "int32")
        return step < self.freeze_last_layer_epochs * self.steps_per_epoch

    def get_config(self):
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "min_learning_rate": self.min_learning_rate,
            "warmup_epochs": self.warmup_epochs,
            "weight_decay": self.weight_decay,
            "weight_decay_end": self.weight_decay_end,
            "teacher_momentum": self.teacher_momentum,
            "teacher_momentum_end": self.teacher_momentum_end,
            "teacher_temperature": self.teacher_temperature,
            "warmup_teacher_temperature": self.warmup_teacher_temperature,
            "warmup_teacher_temperature_epochs": (
                self.warmup_teacher_temperature_epochs
            ),
            "center_momentum": self.center_momentum,
            "freeze_last_layer_epochs": self.freeze_last_layer_epochs,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"DINOSchedule({args})"


def _as_tensor(step):
    if isinstance(step, (int, np.integer)):
        return ops.convert_to_tensor(int(step), "int32")
    return step
