"""Callbacks that `DINO.fit` adds: a run-state check and a NaN guard.

No schedule lives in a callback: `keras_dino.schedules.DINOSchedule`,
given to `DINO.compile`, owns every per-iteration value and the training
step evaluates it. None of these callbacks touches the model per batch,
which on JAX would copy the whole training state to the host every step.
"""

import math
import warnings

import keras


@keras.saving.register_keras_serializable(package="keras_dino")
class RunStateCheck(keras.callbacks.Callback):
    """Refuses a `fit` call that disagrees with the model's run state.

    At the first epoch of each `fit` it compares a non-zero
    `initial_epoch` with the model's iteration counter and
    `steps_per_epoch` with the schedule's, so that a resumed or repeated
    `fit` continues the run exactly or stops with an explanation. (A `fit`
    starting at epoch 0 continues from wherever the model is, so
    `fit(epochs=1)` in a loop is one run.) It warns once the schedule is
    over (later iterations keep the schedule's last values).
    """

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        self._checked = False

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self, "_checked", False):
            return
        self._checked = True
        schedule = self.model.schedule
        steps = self.params.get("steps")
        spe = schedule.steps_per_epoch
        if steps and int(steps) != spe:
            raise ValueError(
                f"fit runs {steps} steps per epoch but the DINOSchedule was "
                f"built for {spe}. Pass steps_per_epoch={spe} to fit, or "
                "compile with a schedule for this epoch length."
            )
        done = int(keras.ops.convert_to_numpy(self.model.iteration))
        # fit(epochs=1) in a loop starts every call at epoch 0 and simply
        # continues the run; an explicit initial_epoch must agree with it.
        if epoch > 0 and done != epoch * spe:
            raise ValueError(
                f"fit starts at epoch {epoch} (initial_epoch) but the model "
                f"has taken {done} iterations, i.e. {done / spe:g} epochs of "
                f"{spe} steps. Pass initial_epoch={done // spe} (or 0) to "
                "continue the run (the schedules follow the model's "
                "iteration counter), or build a new model to start afresh."
            )
        if done >= schedule.total_steps:
            warnings.warn(
                f"The DINOSchedule covers {schedule.total_steps} iterations "
                f"and the model has taken {done}; further training keeps "
                "the schedule's last values.",
                stacklevel=2,
            )


class NonFiniteLossError(RuntimeError):
    """Raised when the DINO loss becomes NaN or infinite."""


@keras.saving.register_keras_serializable(package="keras_dino")
class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` with a clear error when the loss or a weight is not finite.

    It checks the step's `loss` and `weights_finite` (which `DINO` logs
    after each update), so a step with a finite loss but a non-finite
    update stops training too. It reads only the step's logs (never the
    model) and is `async_safe`: on JAX and PyTorch Keras runs its check in
    a worker thread, so it adds
    no host synchronisation to the training loop (unless another callback,
    such as the `verbose=1` progress bar, already forces one); the error
    surfaces a step later, and always before `on_epoch_end`, so it stops
    training before any checkpoint callback can overwrite a good file.
    """

    async_safe = True

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"step {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")

    def _check(self, logs, where):
        logs = logs or {}
        loss = logs.get("loss")
        loss = None if loss is None else float(loss)
        finite = logs.get("weights_finite")
        if finite is not None and float(finite) < 1.0:
            what = f"Some weights became NaN or infinite at {where}"
            if loss is not None:
                what += f" (loss {loss})"
        elif loss is not None and not math.isfinite(loss):
            what = f"The DINO loss became {loss} at {where}"
        else:
            return
        raise NonFiniteLossError(
            f"{what}. Training was "
            "stopped; checkpoints already written were left as they "
            "are. Try a lower learning rate, a longer warm-up, "
            "gradient clipping (clip_norm=3.0), a teacher-temperature "
            "warm-up (DINOSchedule(warmup_teacher_temperature_epochs=30)), "
            "float32 instead of mixed precision, and check the inputs "
            "for NaN."
        )


def with_default_callbacks(callbacks=None):
    """`callbacks` plus a `NonFiniteLossGuard` and a `RunStateCheck`.

    The guard is put first so that it runs before any checkpointing
    callback; each is added only when not given.
    """
    callbacks = list(callbacks or [])
    given = {type(c) for c in callbacks}
    added = [
        cls()
        for cls in (NonFiniteLossGuard, RunStateCheck)
        if not any(issubclass(g, cls) for g in given)
    ]
    return added + callbacks
