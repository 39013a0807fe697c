"""Keras layers of the DINO Vision Transformer and head."""

from keras_dino.layers.attention import MultiHeadSelfAttention
from keras_dino.layers.dense import Dense
from keras_dino.layers.device_multi_crop import DeviceMultiCropAugmentation
from keras_dino.layers.dino_head import DINOHead
from keras_dino.layers.drop_path import DropPath
from keras_dino.layers.patch_embedding import PatchEmbedding
from keras_dino.layers.preprocessing import ImagePreprocessing
from keras_dino.layers.vit_block import ViTBlock

__all__ = [
    "DINOHead",
    "Dense",
    "DeviceMultiCropAugmentation",
    "DropPath",
    "ImagePreprocessing",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "ViTBlock",
]
