"""keras_dino: DINO self-supervised Vision Transformers for Keras 3."""

from keras_dino import callbacks
from keras_dino import configs
from keras_dino import evaluation
from keras_dino import layers
from keras_dino import losses
from keras_dino import models
from keras_dino import optimizers
from keras_dino import schedules
from keras_dino import weights
from keras_dino.version import __version__

__all__ = [
    "__version__",
    "callbacks",
    "configs",
    "evaluation",
    "layers",
    "losses",
    "models",
    "optimizers",
    "schedules",
    "weights",
]
