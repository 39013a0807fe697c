"""keras_dino: DINO self-supervised Vision Transformers for Keras 3."""

from keras_dino import layers
from keras_dino import models
from keras_dino.version import __version__

__all__ = ["__version__", "layers", "models"]
