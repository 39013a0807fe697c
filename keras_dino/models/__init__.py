"""DINO models: the ViT backbone and the self-distillation model."""

from keras_dino.models.dino import DINO
from keras_dino.models.vit_backbone import VARIANTS
from keras_dino.models.vit_backbone import ViTBackbone

__all__ = ["DINO", "VARIANTS", "ViTBackbone"]
