"""Per-iteration schedules of the reference DINO (`utils.cosine_scheduler`)."""

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


def teacher_temperature_schedule(warmup_value, value, warmup_epochs, epochs):
    """Per-epoch teacher temperatures, as the reference `DINOLoss` builds.

    `linspace(warmup_value, value, warmup_epochs)` then `value` for the
    remaining epochs.
    """
    warmup_epochs = int(warmup_epochs)
    if warmup_epochs > epochs:
        raise ValueError(
            f"warmup_epochs ({warmup_epochs}) is longer than the training "
            f"({epochs} epochs); lower the teacher-temperature warm-up."
        )
    return np.concatenate(
        [
            np.linspace(warmup_value, value, warmup_epochs),
            np.full(epochs - warmup_epochs, value),
        ]
    )
