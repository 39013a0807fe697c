"""The learning rate of the reference linear evaluation.

`0.001 * batch_size / 256`, decayed by a cosine that, as the reference's
`CosineAnnealingLR` stepped once per epoch, changes once per *epoch*.
"""

import keras
from keras import ops

from keras_dino.schedules import CosineSchedule


def linear_probe_learning_rate(batch_size, base_learning_rate=0.001):
    """The reference scaling rule: `base_learning_rate * batch_size / 256`."""
    return base_learning_rate * batch_size / 256.0


@keras.saving.register_keras_serializable(package="keras_dino")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay that changes once per epoch (`CosineAnnealingLR`).

    `lr(epoch) = final + (initial - final) * (1 + cos(pi * epoch /
    epochs)) / 2` with `epoch = step // steps_per_epoch`, so epoch 0 trains
    at `initial_learning_rate` and the last epoch at a small positive rate.
    This is `keras_dino.schedules.CosineSchedule` (no warm-up, one step per
    epoch) evaluated at the epoch of the optimizer step.

    Args:
        initial_learning_rate: float.
        steps_per_epoch: int, optimizer steps per epoch.
        epochs: int, `T_max` of the cosine.
        final_learning_rate: float, `eta_min` (0 in the reference).

    Example:
    >>> lr = EpochCosineDecay(0.001, steps_per_epoch=100, epochs=10)
    >>> optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    """

    def __init__(
        self,
        initial_learning_rate,
        steps_per_epoch,
        epochs,
        final_learning_rate=0.0,
    ):
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(
                "steps_per_epoch and epochs must be positive; got "
                f"{steps_per_epoch} and {epochs}."
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.final_learning_rate = float(final_learning_rate)
        self.cosine = CosineSchedule(
            self.initial_learning_rate,
            self.final_learning_rate,
            total_steps=self.epochs,
        )

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.cosine(ops.floor(step / self.steps_per_epoch))

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "final_learning_rate": self.final_learning_rate,
        }
