"""Optimizers with the reference DINO's exact update rules.

Any Keras optimizer trains `keras_dino.models.DINO`; these match the
reference numerically (PyTorch's AdamW and SGD and the reference's LARS,
with per-variable clipping and the reference's weight-decay exclusions),
and follow the `DINOSchedule`'s weight decay.
"""

from keras_dino.optimizers.adamw import DINOAdamW
from keras_dino.optimizers.lars import LARS
from keras_dino.optimizers.sgd import DINOSGD

__all__ = ["DINOAdamW", "DINOSGD", "LARS"]
