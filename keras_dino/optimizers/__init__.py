"""Optimizers with the reference DINO's exact update rules."""

from keras_dino.optimizers.adamw import DINOAdamW
from keras_dino.optimizers.adamw import dino_adamw

__all__ = ["DINOAdamW", "dino_adamw"]
