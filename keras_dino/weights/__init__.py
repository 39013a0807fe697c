"""Reading reference DINO checkpoints (.pth, safetensors) into Keras."""

from keras_dino.weights.builders import backbone_from_checkpoint
from keras_dino.weights.builders import describe_checkpoint
from keras_dino.weights.builders import dino_from_checkpoint
from keras_dino.weights.convert import Checkpoint
from keras_dino.weights.convert import backbone_weight_map
from keras_dino.weights.convert import convert_backbone_config
from keras_dino.weights.convert import convert_backbone_weights
from keras_dino.weights.convert import convert_head_config
from keras_dino.weights.convert import convert_head_weights
from keras_dino.weights.convert import head_weight_map
from keras_dino.weights.convert import load_weights_file
from keras_dino.weights.convert import split_checkpoint
from keras_dino.weights.convert import to_reference_names
from keras_dino.weights.presets import PRESETS
from keras_dino.weights.presets import get_checkpoint_file
from keras_dino.weights.presets import load_backbone
from keras_dino.weights.presets import load_dino
from keras_dino.weights.safetensors_reader import load_safetensors
from keras_dino.weights.torch_pickle import CheckpointArgs
from keras_dino.weights.torch_pickle import UnsafeCheckpointError
from keras_dino.weights.torch_pickle import load_torch_file

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CheckpointArgs",
    "UnsafeCheckpointError",
    "backbone_from_checkpoint",
    "backbone_weight_map",
    "convert_backbone_config",
    "convert_backbone_weights",
    "convert_head_config",
    "convert_head_weights",
    "describe_checkpoint",
    "dino_from_checkpoint",
    "get_checkpoint_file",
    "head_weight_map",
    "load_backbone",
    "load_dino",
    "load_safetensors",
    "load_torch_file",
    "load_weights_file",
    "split_checkpoint",
    "to_reference_names",
]
