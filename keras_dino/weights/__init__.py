"""Reading reference DINO checkpoints (.pth, safetensors) into Keras.

Importing this package registers the loaders behind
`ViTBackbone.from_preset` and `DINO.from_preset` (`import keras_dino` does
it). The converters import the models; the models never import this
package.
"""

from keras_dino.weights.builders import backbone_from_checkpoint
from keras_dino.weights.builders import describe_checkpoint
from keras_dino.weights.builders import dino_from_checkpoint
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.errors import CheckpointFormatError
from keras_dino.weights.presets import get_checkpoint_file
from keras_dino.weights.torch_pickle import UnsafeCheckpointError

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "backbone_from_checkpoint",
    "describe_checkpoint",
    "dino_from_checkpoint",
    "get_checkpoint_file",
    "load_weights_file",
]
