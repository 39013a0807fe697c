"""tf.data input pipelines for DINO: multi-crop augmentation and readers.

This is the only part of `keras_dino` that imports TensorFlow; the pipelines
feed `fit` on every Keras backend.
"""

from keras_dino.data.multi_crop import IMAGENET_MEAN
from keras_dino.data.multi_crop import IMAGENET_STD
from keras_dino.data.multi_crop import MultiCropAugmentation
from keras_dino.data.random_resized_crop import sample_crop_boxes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropAugmentation",
    "sample_crop_boxes",
]
