"""Optimizers with the reference DINO's exact update rules."""

from keras_dino.optimizers.adamw import DINOAdamW
from keras_dino.optimizers.adamw import dino_adamw
from keras_dino.optimizers.lars import LARS
from keras_dino.optimizers.sgd import DINOSGD

__all__ = ["DINOAdamW", "DINOSGD", "LARS", "dino_adamw"]
