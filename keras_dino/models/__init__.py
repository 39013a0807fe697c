"""DINO models: the ViT and ResNet backbones and the self-distillation model."""

from keras_dino.models.dino import DINO
from keras_dino.models.resnet_backbone import RESNET_VARIANTS
from keras_dino.models.resnet_backbone import ResNetBackbone
from keras_dino.models.vit_backbone import VARIANTS
from keras_dino.models.vit_backbone import ViTBackbone

__all__ = [
    "DINO",
    "RESNET_VARIANTS",
    "VARIANTS",
    "ResNetBackbone",
    "ViTBackbone",
]
