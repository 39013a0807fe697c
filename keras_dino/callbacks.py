"""Callbacks that own DINO's epoch-level and run-length schedules.

They write model variables only at the start of training or of an epoch;
the per-step arithmetic (teacher momentum, learning rate, weight decay)
runs inside the compiled step from `optimizer.iterations`. None of them
touches the model per batch, which on JAX would copy the whole training
state to the host every step.
"""

import math

import keras

from keras_dino.schedules import teacher_temperature_schedule


class _ConfigurableCallback(keras.callbacks.Callback):
    """A callback rebuilt from its `get_config()` arguments."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _steps_per_epoch(callback):
    steps = callback.params.get("steps")
    if not steps:
        raise ValueError(
            f"{type(callback).__name__} needs the number of steps per epoch; "
            "pass `steps_per_epoch` to fit or use a dataset of known length."
        )
    return int(steps)


@keras.saving.register_keras_serializable(package="keras_dino")
class TeacherMomentumSchedule(_ConfigurableCallback):
    """Cosine teacher EMA momentum from `base` to `final` over the run.

    At the start of `fit` it records the run length (epochs x steps per
    epoch) in the model; each step then uses
    `final + (base - final) * (1 + cos(pi * step / total)) / 2`.

    Args:
        base: float, momentum at step 0 (paper: 0.996).
        final: float, the value the cosine tends to (paper: 1.0).
        epochs: optional int, the length of the whole run when `fit` is
            called for part of it (e.g. a job that stops early and resumes);
            by default `fit`'s `epochs`.
    """

    def __init__(self, base=0.996, final=1.0, epochs=None):
        super().__init__()
        self.base, self.final = float(base), float(final)
        self.epochs = None if epochs is None else int(epochs)

    def get_config(self):
        return {"base": self.base, "final": self.final, "epochs": self.epochs}

    def on_train_begin(self, logs=None):
        epochs = self.epochs or self.params["epochs"]
        total = epochs * _steps_per_epoch(self)
        self.model.teacher_momentum_base.assign(self.base)
        self.model.teacher_momentum_final.assign(self.final)
        self.model.teacher_momentum_steps.assign(total)


@keras.saving.register_keras_serializable(package="keras_dino")
class TeacherTemperatureSchedule(_ConfigurableCallback):
    """Teacher temperature, linear warm-up per epoch then constant.

    Args:
        value: float, temperature after warm-up (paper: 0.04).
        warmup_value: float, temperature of epoch 0 (paper: 0.04).
        warmup_epochs: int, epochs of linear warm-up (paper: 0; 30 is
            suggested when training is unstable).
        epochs: optional int, the length of the whole run; by default
            `fit`'s `epochs`.
    """

    def __init__(
        self, value=0.04, warmup_value=0.04, warmup_epochs=0, epochs=None
    ):
        super().__init__()
        self.value = float(value)
        self.warmup_value = float(warmup_value)
        self.warmup_epochs = int(warmup_epochs)
        self.epochs = None if epochs is None else int(epochs)

    def get_config(self):
        return {
            "value": self.value,
            "warmup_value": self.warmup_value,
            "warmup_epochs": self.warmup_epochs,
            "epochs": self.epochs,
        }

    def temperature(self, epoch, epochs):
        """The temperature of `epoch` in a run of `epochs`."""
        schedule = teacher_temperature_schedule(
            self.warmup_value, self.value, self.warmup_epochs, epochs
        )
        return float(schedule[min(epoch, epochs - 1)])

    def on_epoch_begin(self, epoch, logs=None):
        value = self.temperature(epoch, self.epochs or self.params["epochs"])
        self.model.teacher_temperature.assign(value)


@keras.saving.register_keras_serializable(package="keras_dino")
class CenterMomentum(_ConfigurableCallback):
    """Momentum of the center update, constant or a function of the epoch.

    Args:
        momentum: float (paper: 0.9) or a callable `epoch -> float`.
    """

    def __init__(self, momentum=0.9):
        super().__init__()
        self.momentum = momentum

    def get_config(self):
        if callable(self.momentum):
            raise NotImplementedError(
                "A CenterMomentum with a callable momentum cannot be "
                "serialised."
            )
        return {"momentum": self.momentum}

    def on_epoch_begin(self, epoch, logs=None):
        value = (
            self.momentum(epoch) if callable(self.momentum) else (self.momentum)
        )
        self.model.center_momentum.assign(float(value))


@keras.saving.register_keras_serializable(package="keras_dino")
class FreezeLastLayer(_ConfigurableCallback):
    """Keeps the head's last layer untouched for the first `epochs` epochs.

    Sets the optimiser's `frozen_steps` to `epochs * steps_per_epoch`; the
    optimiser then neither steps nor decays the last layer before that
    iteration (as the reference, which drops its gradient to `None`).

    Args:
        epochs: int (paper: 1).
    """

    def __init__(self, epochs=1):
        super().__init__()
        self.epochs = int(epochs)

    def get_config(self):
        return {"epochs": self.epochs}

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "frozen_steps"):
            if not getattr(optimizer, "built", False) and hasattr(
                optimizer, "freeze_variables"
            ):
                optimizer.build(self.model.trainable_variables)
            else:
                raise ValueError(
                    "FreezeLastLayer needs keras_dino.optimizers.DINOAdamW."
                )
        optimizer.frozen_steps.assign(self.epochs * _steps_per_epoch(self))


class NonFiniteLossError(RuntimeError):
    """Raised when the DINO loss becomes NaN or infinite."""


@keras.saving.register_keras_serializable(package="keras_dino")
class NonFiniteLossGuard(_ConfigurableCallback):
    """Stops `fit` with a clear error when the loss is not finite.

    It reads only the step's logs (never the model) and is `async_safe`:
    on JAX and PyTorch Keras runs its check in a worker thread, so it adds
    no host synchronisation to the training loop (unless another callback,
    such as the `verbose=1` progress bar, already forces one); the error
    surfaces a step later, and always before `on_epoch_end`, so it stops
    training before any checkpoint callback can overwrite a good file.
    """

    async_safe = True

    def get_config(self):
        return {}

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"step {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")

    def _check(self, logs, where):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"The DINO loss became {loss} at {where}. Training was "
                "stopped; checkpoints already written were left as they "
                "are. Try a lower learning rate, a longer warm-up, "
                "gradient clipping (clip_norm=3.0), a teacher-temperature "
                "warm-up (TeacherTemperatureSchedule(warmup_epochs=30)), "
                "float32 instead of mixed precision, and check the inputs "
                "for NaN."
            )


_DEFAULTS = (
    TeacherMomentumSchedule,
    TeacherTemperatureSchedule,
    CenterMomentum,
    FreezeLastLayer,
)


def with_default_callbacks(callbacks=None):
    """`callbacks` plus the paper's defaults for every schedule not given.

    A `NonFiniteLossGuard` is put first so that it runs before any
    checkpointing callback.
    """
    callbacks = list(callbacks or [])
    given = {type(c) for c in callbacks}
    defaults = [
        cls() for cls in _DEFAULTS if not any(issubclass(g, cls) for g in given)
    ]
    guard = [] if NonFiniteLossGuard in given else [NonFiniteLossGuard()]
    return guard + defaults + callbacks
